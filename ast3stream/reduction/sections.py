"""FITS image sections (``TRIMSEC``, ``BIASSEC``, ``DATASEC``, ``DETSEC``) as numpy slices.

Sections are written 1-based and inclusive, ``[x0:x1,y0:y1]``; a range may run backwards
(``DETSEC = '[1025:2048,3072:2049]'`` means the amplifier is read out flipped in y).
"""
from __future__ import annotations

import re

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


def parse_section(section: str) -> tuple[int, int, int, int]:
    """``'[x0:x1,y0:y1]'`` -> 1-based inclusive ``(x0, x1, y0, y1)``, order kept."""
    match = _SECTION.match(str(section).strip())
    if match is None:
        raise ValueError(f"not a FITS section: {section!r}")
    return tuple(int(v) for v in match.groups())  # type: ignore[return-value]


def section_slices(section: str) -> tuple[slice, slice]:
    """Numpy ``(rows, cols)`` slices covering a section, always increasing."""
    x0, x1, y0, y1 = parse_section(section)
    return slice(min(y0, y1) - 1, max(y0, y1)), slice(min(x0, x1) - 1, max(x0, x1))


def section_flips(section: str) -> tuple[bool, bool]:
    """Whether the section runs backwards in ``(y, x)``."""
    x0, x1, y0, y1 = parse_section(section)
    return y1 < y0, x1 < x0
