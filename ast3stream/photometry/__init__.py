"""Photometry: aperture (eq. 1), chi-square zero point (eq. 2), quadratic residual (eq. 3),
limiting magnitude; PSF photometry with a position-dependent PSF in :mod:`.psf`."""
from .calibrate import aperture_fluxes, calibrate, effective_pixels, limit, match_sky, zero_point

__all__ = ["aperture_fluxes", "calibrate", "effective_pixels", "limit", "match_sky", "zero_point"]
