"""The field-dependent PSF: an elliptical Moffat (1969) profile

    I(r) = F (beta - 1) / (pi a b) [1 + (u/a)^2 + (v/b)^2]^(-beta),   FWHM = 2 alpha sqrt(2^(1/beta) - 1),

with ``a = alpha / sqrt(1 - e)``, ``b = alpha sqrt(1 - e)`` (so the geometric-mean FWHM is the FWHM)
and (u, v) the offsets along/across the major axis. Over the field the FWHM grows quadratically
with the normalised radius rho (1 at the corners) plus a per-exposure tilt, and the ellipticity is
``e_corner rho^2`` pointing radially, added (as a spin-2 vector) to a small per-exposure term
(tracking, wind).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detector import normalised_radius


def moffat_alpha(fwhm, beta):
    """Moffat core width alpha for a given FWHM."""
    return fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))


@dataclass(frozen=True)
class PSFModel:
    fwhm: float            #: at the detector centre [px]
    beta: float
    curvature: float       #: fractional FWHM increase at the corners
    tilt_x: float          #: fractional FWHM gradient from the left to the right edge
    elongation: float      #: ellipticity at the corners
    e1: float = 0.0        #: per-exposure ellipticity components (e cos 2 phi, e sin 2 phi)
    e2: float = 0.0
    nx: int = 1
    ny: int = 1

    def at(self, x, y):
        """``(fwhm, e, theta)`` arrays at pixel positions; theta in radians from +x towards +y."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        rho = normalised_radius(x, y, self.nx, self.ny)
        fwhm = self.fwhm * (1 + self.curvature * rho**2 + self.tilt_x * (x / max(self.nx - 1, 1) - 0.5))
        phi = np.arctan2(y - (self.ny - 1) / 2, x - (self.nx - 1) / 2)
        e_rad = self.elongation * rho**2
        e1 = e_rad * np.cos(2 * phi) + self.e1
        e2 = e_rad * np.sin(2 * phi) + self.e2
        e = np.clip(np.hypot(e1, e2), 0, 0.6)
        return fwhm, e, 0.5 * np.arctan2(e2, e1)

    def median_fwhm(self) -> float:
        """Median FWHM over the detector (what a pipeline measures from its stars)."""
        yy, xx = np.mgrid[0:self.ny:complex(0, 20), 0:self.nx:complex(0, 20)]
        return float(np.median(self.at(xx.ravel(), yy.ravel())[0]))
