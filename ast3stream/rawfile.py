"""Raw exposure files: is a FITS/fpack file complete, and what exposure is it?

A file counts as complete when its HDU structure accounts for every byte: each header
ends with an ``END`` card and each data unit has the size its header announces
(``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)``, padded to 2880-byte blocks),
and the last unit ends exactly at the end of the file. A half-written or truncated file
fails this test; so does anything that is not FITS, or a header whose structural keywords
make no sense (negative axis lengths, a BITPIX that FITS does not have).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

from astropy.io import fits

from .events import SAFE_ID, ExposureEvent
from .paths import UnsafeName, safe_name

BLOCK = 2880
CARD = 80
BITPIX = (8, 16, 32, 64, -32, -64)


class IncompleteFile(ValueError):
    """Not (yet) a complete FITS file; the message says why."""


class BadHeader(ValueError):
    """A complete FITS file whose header cannot describe an exposure; the message says why."""


def _structure(cards: dict[str, str], n_hdu: int) -> int:
    """Bytes of the data unit an HDU's header announces; :class:`IncompleteFile` if the header is malformed."""
    def number(key: str, default: int | None = None) -> int:
        if key not in cards and default is not None:
            return default
        if key not in cards:
            raise IncompleteFile(f"HDU {n_hdu}: malformed header (no {key})")
        try:
            return int(cards[key])
        except ValueError:
            raise IncompleteFile(f"HDU {n_hdu}: malformed header ({key} = {cards[key]!r} is not an integer)") from None

    bitpix, naxis = number("BITPIX"), number("NAXIS")
    if bitpix not in BITPIX:
        raise IncompleteFile(f"HDU {n_hdu}: malformed header (BITPIX = {bitpix}, FITS allows {BITPIX})")
    if not 0 <= naxis <= 999:
        raise IncompleteFile(f"HDU {n_hdu}: malformed header (NAXIS = {naxis} outside 0-999)")
    dims = [number(f"NAXIS{i}") for i in range(1, naxis + 1)]
    pcount, gcount = number("PCOUNT", 0), number("GCOUNT", 1)
    if min(dims, default=0) < 0 or pcount < 0 or gcount < 0:
        raise IncompleteFile(f"HDU {n_hdu}: malformed header (negative NAXISn, PCOUNT or GCOUNT)")
    nelem = math.prod(dims) if naxis else 0
    return abs(bitpix) // 8 * gcount * (pcount + nelem)


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
            nbytes = _structure(cards, n_hdu)
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
    """The header of the first HDU holding pixels (the primary, or a tile-compressed image).

    Every card is parsed here (astropy parses them lazily), so a damaged card raises
    :class:`BadHeader` now rather than wherever its keyword is first read.
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            header = next((hdu.header for hdu in hdul if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2),
                          hdul[0].header).copy()
        for card in header.cards:
            card.value  # parses it
        return header
    except Exception as exc:  # astropy raises many types on a damaged header
        raise BadHeader(f"{Path(path).name}: unreadable FITS header ({type(exc).__name__}: {exc})") from exc


def exposure_id(path: Path, header: fits.Header) -> str:
    """``EXPID`` of the header, else the file name without its FITS extensions.

    It names folders and message keys, so it must be a plain name: letters, digits and
    ``._+:-``, at most 128 characters, starting with a letter or digit.
    """
    stem = path.name
    for ext in (".fz", ".fits", ".fit"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    value = str(header.get("EXPID", stem)).strip()
    if not SAFE_ID.fullmatch(value):
        raise BadHeader(f"{path.name}: exposure id {value[:80]!r} (EXPID or file name) is not a plain name "
                        "of letters, digits and ._+:- (at most 128 characters)")
    return value


def _mjd(path: Path, header: fits.Header) -> float | None:
    if "MJD-OBS" not in header:
        return None
    try:
        mjd = math.nan if isinstance(header["MJD-OBS"], bool) else float(header["MJD-OBS"])
    except (TypeError, ValueError):
        mjd = math.nan
    if not (math.isfinite(mjd) and 0 < mjd < 1e6):  # 1858 to 4596
        raise BadHeader(f"{path.name}: MJD-OBS = {header['MJD-OBS']!r} is not a date")
    return mjd


def describe(path: Path, ctx, file_closed_at: float | None = None) -> ExposureEvent:
    """The exposure event of a complete raw file; ``too`` from the database's ToO field list.

    Raises :class:`IncompleteFile` or :class:`BadHeader` with the reason.
    """
    path = Path(path).resolve()
    check_complete(path)
    header = science_header(path)
    expid, mjd = exposure_id(path, header), _mjd(path, header)
    field_id = header.get("FIELD")
    try:  # it names template folders
        field_id = None if field_id is None else safe_name(str(field_id).strip(), "FIELD")
    except UnsafeName as exc:
        raise BadHeader(f"{path.name}: {exc}") from None
    too = header.get("TOO", False)
    if too not in (True, False):  # T/F, or 1/0
        raise BadHeader(f"{path.name}: TOO = {too!r} is not a FITS logical (T or F)")
    too = bool(too) or ctx.db.too_event_for_field(field_id) is not None
    stat = path.stat()
    return ExposureEvent(exposure_id=expid, path=str(path), sha256=sha256sum(path),
                         size=stat.st_size, file_closed_at=file_closed_at or stat.st_mtime,
                         detected_at=time.time(), field_id=field_id, mjd=mjd, too=too, namespace=ctx.db.namespace)


def detector_from_header(path: str | Path, base):
    """The detector settings of ``base`` with the frame size and sections of a raw file's header.

    For a camera whose raw headers carry ``TRIMSEC``/``BIASSEC`` (or a scaled simulator frame).
    """
    header = science_header(path)
    try:
        changes = {"nx_raw": int(header["NAXIS1"]), "ny_raw": int(header["NAXIS2"])}
        for key in ("TRIMSEC", "BIASSEC"):
            if key in header:
                changes[key.lower()] = str(header[key])
        for key, name in (("GAIN", "gain"), ("RDNOISE", "read_noise"), ("SATURATE", "saturation")):
            if key in header:
                changes[name] = float(header[key])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadHeader(f"{Path(path).name}: cannot take the detector from its header ({exc})") from exc
    return base.model_copy(update=changes)
