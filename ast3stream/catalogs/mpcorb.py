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

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import ephem

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


def read_mpcorb(path: str | Path) -> list[Orbit]:
    """All parseable orbit lines of an MPCORB-format file."""
    orbits = []
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            if len(line) < 103:
                continue
            try:
                el = [float(line[s]) for s in (slice(26, 35), slice(37, 46), slice(48, 57), slice(59, 68),
                                               slice(70, 79), slice(92, 103))]
                epoch = unpack_epoch(line[20:25])
            except (ValueError, IndexError):
                continue
            h = float(line[8:13]) if line[8:13].strip() else 99.0
            g = float(line[14:19]) if line[14:19].strip() else 0.15
            desig = unpack_number(line[0:7])
            orbits.append(Orbit(desig, _name(line) or desig, h, g, epoch, *el))
    return orbits
