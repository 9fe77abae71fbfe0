"""Source extraction (sep), the clean star list and the image FWHM."""
from .clean import clean_star_list, image_fwhm
from .extract import MASKED, bit_mask, extract, stellarity

__all__ = ["MASKED", "bit_mask", "clean_star_list", "extract", "image_fwhm", "stellarity"]
