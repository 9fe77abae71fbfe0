"""Alignment: resample a science frame onto its template's grid and measure how well it fits."""
from .align import align
from .lanczos import pixel_map, resample_cupy, resample_numba
from .measure import measure_alignment

__all__ = ["align", "measure_alignment", "pixel_map", "resample_numba", "resample_cupy"]
