"""Astrometry: triangle matching to a reference catalogue and a TAN + SIP fit."""
import re

from astropy.wcs import WCS

from ..image import Frame
from .fit import fit_tan_sip, tan_deproject, tan_project
from .match import Similarity, fit_similarity, match_triangles
from .solve import AstrometryError, solve

_WCS_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|"
                      r"PS\d_\d+|[AB]P?_(ORDER|DMAX|\d+_\d+)|LONPOLE|LATPOLE|RADESYS|EQUINOX|WCSNAME|"
                      r"LTV\d|LTM\d_\d|WAT\d_\d+|WCSDIM)$")


def apply_wcs(frame: Frame, wcs: WCS) -> Frame:
    """Replace the WCS keywords of ``frame.header`` by ``wcs`` (SIP included); returns the frame."""
    for key in [k for k in frame.header.keys() if _WCS_KEY.match(k)]:
        del frame.header[key]
    frame.header.update(wcs.to_header(relax=True))
    return frame


__all__ = ["AstrometryError", "Similarity", "apply_wcs", "fit_similarity", "fit_tan_sip", "match_triangles",
           "solve", "tan_deproject", "tan_project"]
