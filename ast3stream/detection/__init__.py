"""Detection of candidates on difference images: cuts, SNR image, stamps and photometry."""
from .detect import detect, limiting_magnitude
from .photometry import gaussian_psf, psf_flux
from .stamps import cutouts

__all__ = ["detect", "limiting_magnitude", "psf_flux", "gaussian_psf", "cutouts"]
