"""Classifiers: the rotation-invariant real/bogus network on survey-independent stamps (32x32 at
3 px per PSF FWHM, noise units; see :mod:`.stamps`) and the cloud CNN."""
from .realbogus import RealBogus

__all__ = ["RealBogus"]
