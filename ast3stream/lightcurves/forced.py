"""Forced PSF photometry on a difference image at given positions, with upper limits."""
from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..detection.photometry import psf_flux


def forced_photometry(diff, x, y, fwhm_px: float, zp: float, snr_limit: float = 5.0) -> Table:
    """``x, y, flux, flux_err, snr, mag, mag_err, upper_limit, detected`` at 0-based positions.

    The PSF is ``diff.stats['psf_fwhm']`` when present (else ``fwhm_px``), scaled by
    ``diff.stats['apcorr']``; errors are multiplied by ``diff.errscale_at(x, y)`` (correlated
    noise, :meth:`~ast3stream.subtraction.subtract.Difference.errscale_at`);
    ``upper_limit = zp - 2.5 log10(snr_limit flux_err)``; ``mag`` is NaN unless
    ``flux / flux_err >= snr_limit``.
    """
    fwhm = float(diff.stats.get("psf_fwhm", fwhm_px))
    flux, err = psf_flux(diff.diff, diff.noise, x, y, fwhm, mask=diff.mask, apcorr=float(diff.stats.get("apcorr", 1.0)))
    err = err * diff.errscale_at(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / err
        detected = snr >= snr_limit
        mag = np.where(detected, zp - 2.5 * np.log10(np.abs(flux)), np.nan)
        mag_err = np.where(detected, 2.5 / np.log(10) / snr, np.nan)
        upper = zp - 2.5 * np.log10(snr_limit * err)
    return Table(dict(x=np.atleast_1d(np.asarray(x, float)), y=np.atleast_1d(np.asarray(y, float)), flux=flux,
                      flux_err=err, snr=snr, mag=mag, mag_err=mag_err, upper_limit=upper, detected=detected))
