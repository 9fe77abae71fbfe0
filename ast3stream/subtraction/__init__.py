"""Image subtraction with SFFT (Hu et al. 2022, ApJ 936, 157) on tiles, NumPy or CuPy backend."""
from .backend import gpu_available, use_gpu
from .engine import warm_up
from .subtract import Difference, prepare_template, subtract, x2nrm

__all__ = ["Difference", "prepare_template", "subtract", "x2nrm", "warm_up", "gpu_available", "use_gpu"]
