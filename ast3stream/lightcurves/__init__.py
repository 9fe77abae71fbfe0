"""Transient objects and their light curves: association and forced photometry (pure functions)."""
from .association import associate
from .forced import forced_photometry

__all__ = ["associate", "forced_photometry"]
