"""Instrument signature removal: overscan/trim, master bias/flat, bad pixels, saturation,
cosmic rays (astroscrappy) and satellite trails (Hough), giving a :class:`~ast3stream.image.Frame`
in electrons with its mask plane."""
from .calibration import Calibration, bad_pixel_mask, clipped_mean
from .cosmics import detect_cosmics
from .overscan import BadFrameError, RawImage, check_pixels, read_raw, subtract_overscan
from .reduce import reduce_raw
from .trails import Trail, find_trails, trail_pixels

__all__ = ["BadFrameError", "Calibration", "RawImage", "Trail", "bad_pixel_mask", "check_pixels", "clipped_mean",
           "detect_cosmics", "find_trails", "read_raw", "reduce_raw", "subtract_overscan", "trail_pixels"]
