"""Raw exposure files: is a FITS/fpack file complete, and what exposure is it?

A file counts as complete when its HDU structure accounts for every byte: each header
ends with an ``END`` card and each data unit has the size its header announces
(``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)``, padded to 2880-byte blocks),
and the last unit ends exactly at the end of the file. A half-written or truncated file
fails this test; so does anything that is not FITS.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from astropy.io import fits

from .events import ExposureEvent

BLOCK = 2880
CARD = 80


class IncompleteFile(ValueError):
    """Not (yet) a complete FITS file; the message says why."""


def check_complete(path: str | Path) -> int:
    """Return the number of HDUs of a complete FITS file, or raise :class:`IncompleteFile`."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise IncompleteFile("empty file")
    if size % BLOCK:
        raise IncompleteFile(f"size {size} is not a multiple of the 2880-byte FITS block (truncated?)")
    pos, n_hdu = 0, 0
    with open(path, "rb") as fh:
        while pos < size:
            cards = {}
            first = True
            while True:
                block = fh.read(BLOCK)
                if len(block) < BLOCK:
                    raise IncompleteFile(f"HDU {n_hdu}: header has no END card before the end of the file")
                pos += BLOCK
                if first:
                    key = block[:8].decode("ascii", "replace").strip()
                    expected = "SIMPLE" if n_hdu == 0 else "XTENSION"
                    if key != expected:
                        raise IncompleteFile(f"not a FITS file: HDU {n_hdu} starts with {key!r}, expected {expected}"
                                             if n_hdu == 0 else f"HDU {n_hdu}: garbage after the last HDU")
                    first = False
                done = False
                for i in range(0, BLOCK, CARD):
                    card = block[i:i + CARD].decode("ascii", "replace")
                    key = card[:8].strip()
                    if key == "END":
                        done = True
                        break
                    if card[8:10] == "= ":
                        cards[key] = card[10:].split("/")[0].strip()
                if done:
                    break
            try:
                bitpix = abs(int(cards["BITPIX"]))
                naxis = int(cards["NAXIS"])
                dims = [int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
            except (KeyError, ValueError) as exc:
                raise IncompleteFile(f"HDU {n_hdu}: malformed header ({exc})") from exc
            nelem = 0
            if naxis:
                nelem = 1
                for d in dims:
                    nelem *= d
            nbytes = bitpix // 8 * int(cards.get("GCOUNT", 1)) * (int(cards.get("PCOUNT", 0)) + nelem)
            padded = -(-nbytes // BLOCK) * BLOCK
            if pos + padded > size:
                raise IncompleteFile(f"HDU {n_hdu}: data unit needs {padded} bytes, file has {size - pos} left (truncated)")
            fh.seek(padded, os.SEEK_CUR)
            pos += padded
            n_hdu += 1
    return n_hdu


def sha256sum(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def science_header(path: str | Path) -> fits.Header:
    """The header of the first HDU holding pixels (the primary, or a tile-compressed image)."""
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2:
                return hdu.header.copy()
        return hdul[0].header.copy()


def exposure_id(path: Path, header: fits.Header) -> str:
    stem = path.name
    for ext in (".fz", ".fits", ".fit"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    return str(header.get("EXPID", stem))


def describe(path: Path, ctx, file_closed_at: float | None = None) -> ExposureEvent:
    """The exposure event of a complete raw file; ``too`` from the database's ToO field list."""
    path = Path(path).resolve()
    check_complete(path)
    header = science_header(path)
    field_id = header.get("FIELD")
    field_id = None if field_id is None else str(field_id)
    too = bool(header.get("TOO", False)) or ctx.db.too_event_for_field(field_id) is not None
    stat = path.stat()
    return ExposureEvent(exposure_id=exposure_id(path, header), path=str(path), sha256=sha256sum(path),
                         size=stat.st_size, file_closed_at=file_closed_at or stat.st_mtime,
                         detected_at=time.time(), field_id=field_id,
                         mjd=float(header["MJD-OBS"]) if "MJD-OBS" in header else None,
                         too=too, namespace=ctx.db.namespace)


def detector_from_header(path: str | Path, base):
    """The detector settings of ``base`` with the frame size and sections of a raw file's header.

    For a camera whose raw headers carry ``TRIMSEC``/``BIASSEC`` (or a scaled simulator frame).
    """
    header = science_header(path)
    changes = {"nx_raw": int(header["NAXIS1"]), "ny_raw": int(header["NAXIS2"])}
    for key in ("TRIMSEC", "BIASSEC"):
        if key in header:
            changes[key.lower()] = str(header[key])
    for key, name in (("GAIN", "gain"), ("RDNOISE", "read_noise"), ("SATURATE", "saturation")):
        if key in header:
            changes[name] = float(header[key])
    return base.model_copy(update=changes)
