"""Minor-planet orbits in the MPC's MPCORB.DAT layout (positions: :mod:`.asteroids`; ``Orbit.body()``
for ``ephem``).

Fixed columns (1-based, MPC "Export Format"): designation 1-7, H 9-13, G 15-19, packed epoch
21-25, mean anomaly 27-35, argument of perihelion 38-46, node 49-57, inclination 60-68,
eccentricity 71-79, mean daily motion 81-91, semi-major axis 93-103 (J2000 ecliptic, deg/AU);
the readable designation is columns 167-194, or what follows the computer field of a
shortened line.
Header lines (anything whose elements do not parse) are skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import ephem
import numpy as np

MJD_TO_DJD = 15019.5  #: ephem dates count days from 1899 Dec 31.5 = MJD 15019.5


def _digit(c: str) -> int:
    return int(c) if c.isdigit() else ord(c) - ord("A") + 10


@lru_cache(maxsize=4096)
def unpack_epoch(packed: str) -> float:
    """MPC packed date (``K25BL`` = 2025-11-21.0) -> MJD."""
    year = 100 * (ord(packed[0]) - ord("A") + 10) + int(packed[1:3])
    d = ephem.Date(f"{year}/{_digit(packed[3])}/{_digit(packed[4])}")
    return float(d) + MJD_TO_DJD


def unpack_number(packed: str) -> str:
    """Packed permanent number (``00001``, ``A0345``) -> ``"1"``, ``"100345"``; others as given."""
    packed = packed.strip()
    if len(packed) == 5 and packed[1:].isdigit():
        return str(_digit(packed[0]) * 10000 + int(packed[1:]))
    return packed


@dataclass
class Orbit:
    designation: str
    name: str
    H: float
    G: float
    epoch_mjd: float
    M: float
    peri: float
    node: float
    incl: float
    e: float
    a: float

    def body(self) -> ephem.EllipticalBody:
        b = ephem.EllipticalBody()
        b._inc, b._Om, b._om, b._e, b._a, b._M = self.incl, self.node, self.peri, self.e, self.a, self.M
        b._epoch_M = ephem.Date(self.epoch_mjd - MJD_TO_DJD)
        b._epoch = ephem.Date("2000/1/1.5")
        b._H, b._G = self.H, self.G
        return b


def _name(line: str) -> str:
    """Readable designation: columns 167-194 of a full line, else the words after the
    4-character computer field that ends a shortened line."""
    if len(line.rstrip("\n")) >= 194:
        return line[166:194].strip()
    words = line[150:].split(None, 1)
    return words[1].strip() if len(words) == 2 else ""


#: 0-based column ranges of the elements
_FIELDS = {"M": (26, 35), "peri": (37, 46), "node": (48, 57), "incl": (59, 68), "e": (70, 79), "a": (92, 103)}


@dataclass
class Elements:
    """Osculating elements of many orbits as arrays (angles in degrees, ``epoch`` MJD TT)."""

    designation: np.ndarray
    name: np.ndarray
    H: np.ndarray
    G: np.ndarray
    epoch: np.ndarray
    M: np.ndarray
    peri: np.ndarray
    node: np.ndarray
    incl: np.ndarray
    e: np.ndarray
    a: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, idx) -> "Elements":
        return Elements(*(np.asarray(getattr(self, f))[idx] for f in self.__dataclass_fields__))

    @classmethod
    def from_orbits(cls, orbits) -> "Elements":
        """From :class:`Orbit` objects."""
        cols = ("designation", "name", "H", "G", "epoch_mjd", "M", "peri", "node", "incl", "e", "a")
        return cls(*(np.array([getattr(o, c) for o in orbits], dtype=str if c in ("designation", "name") else float)
                     for c in cols))

    def orbits(self) -> list[Orbit]:
        return [Orbit(*row) for row in zip(self.designation.tolist(), self.name.tolist(),
                                           *(getattr(self, f).tolist() for f in list(self.__dataclass_fields__)[2:]))]


def _floats(block: np.ndarray, blank: float | None = None) -> np.ndarray:
    """Fixed-width byte fields (n, width) as floats; NaN where a field does not parse
    (``blank`` where it is empty)."""
    text = np.ascontiguousarray(block).view(f"S{block.shape[1]}").ravel()
    try:
        out = text.astype(float)
    except ValueError:
        out = np.array([_float_or_nan(t) for t in text])
    if blank is not None:
        out[np.char.strip(text) == b""] = blank
    return out


def _float_or_nan(t: bytes) -> float:
    try:
        return float(t)
    except ValueError:
        return math.nan


def read_elements(path: str | Path) -> Elements:
    """All parseable orbit lines of an MPCORB-format file, parsed column-wise (1.4 M lines in
    seconds). Lines without numeric elements (headers, rules) are skipped."""
    lines = [ln for ln in Path(path).read_bytes().splitlines() if len(ln) >= 103 and ln[29:30] == b"."]
    if not lines:
        return Elements.from_orbits([])
    b = np.frombuffer(b"".join(ln[:103] for ln in lines), np.uint8).reshape(len(lines), 103)
    el = {k: _floats(b[:, lo:hi]) for k, (lo, hi) in _FIELDS.items()}
    ok = np.all([np.isfinite(v) for v in el.values()], axis=0)
    epochs = {}
    for i, ln in enumerate(lines):
        if ok[i]:
            try:
                epochs[i] = unpack_epoch(ln[20:25].decode("latin-1"))
            except (ValueError, IndexError):
                ok[i] = False
    keep = np.flatnonzero(ok)
    text = [lines[i].decode("latin-1") for i in keep]
    desig = [unpack_number(t[0:7]) for t in text]
    return Elements(np.array(desig), np.array([_name(t) or d for t, d in zip(text, desig)]),
                    _floats(b[keep, 8:13], 99.0), _floats(b[keep, 14:19], 0.15),
                    np.array([epochs[i] for i in keep]), *(el[k][keep] for k in _FIELDS))


def read_mpcorb(path: str | Path) -> list[Orbit]:
    """All parseable orbit lines of an MPCORB-format file as :class:`Orbit` objects."""
    return read_elements(path).orbits()
