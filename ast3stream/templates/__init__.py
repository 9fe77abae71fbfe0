"""Templates: the acceptance rule for a field's reference image, its n x n binned (QIP) version,
and stacks of several epochs (deeper templates).

The registry of templates lives in the database (the lead's); these are the pure parts.
"""
from .acceptance import REJECT_FLAGS, is_acceptable
from .binning import bin_array, bin_frame, bin_header
from .stack import stack_frames

__all__ = ["is_acceptable", "bin_frame", "bin_header", "bin_array", "REJECT_FLAGS", "stack_frames"]
