"""Bad input, property-based (hypothesis): whatever a raw file, a stream event, an alert or a
GW notice gets wrong, it is rejected with a typed error whose message names the problem --
never a hang, a bare numpy/astropy exception or a silent NaN. On a running stack every
rejected input lands in the dead-letter topic exactly once, with its reason, while a good
exposure still alerts.

The raw files are small frames (60x48 light-sensitive pixels + 12 overscan columns) built
by :class:`Raw`; a drawn case is good, or has one defect and the regex its rejection must
match. ``CI`` runs them derandomized (the same examples every run); elsewhere each run
explores new ones.
"""
from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import os
import re
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ast3stream.alerts import build_alert, make_cutout
from ast3stream.alerts import decode as decode_alert
from ast3stream.alerts import encode as encode_alert
from ast3stream.alerts.schema import schema_id as schema_id_of
from ast3stream.alerts.schema import versions
from ast3stream.astrometry import AstrometryError, solve
from ast3stream.config import Settings
from ast3stream.events import FRAME, SAFE_ID, ExposureEvent, MalformedMessage, StageEvent
from ast3stream.gw import BadNotice, read_notice
from ast3stream.gw.notices import ALERT_TYPES
from ast3stream.gw.skymap import probabilities
from ast3stream.pipeline import LANES
from ast3stream.rawfile import BadHeader, IncompleteFile, check_complete, describe
from ast3stream.reduction import BadFrameError, check_pixels, reduce_raw
from ast3stream.reduction.reduce import _approximate_wcs

FUZZ = dict(deadline=None, database=None, derandomize=bool(os.environ.get("CI")),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NX, NY, OVERSCAN = 72, 48, 12
LEVEL, SATURATE = 40.0, 100.0                 # sky level and saturation: fit every integer type
DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64")
FPACK_DTYPES = ("int16", "uint16", "int32", "float32")
REJECTED = (IncompleteFile, BadHeader, BadFrameError)
#: what the watcher's describe() needs of the pipeline context
CTX = SimpleNamespace(db=SimpleNamespace(namespace="", too_event_for_field=lambda field_id: None))


# --------------------------------------------------------------------------------------
# raw files


@dataclass
class Raw:
    """A raw frame to write; ``reason``: regex its rejection must match (None: a good frame)."""

    shape: tuple[int, ...] = (NY, NX)
    dtype: str = "uint16"
    pixels: str = "noise"                      # noise | constant | saturated | nan | nonfinite
    fraction: float = 1.0                      # of pixels saturated
    cards: dict = field(default_factory=dict)  # header cards to set (None deletes)
    history: int = 0                           # HISTORY cards: a huge header
    fpack: bool = False
    seed: int = 0
    damage: tuple = ()                         # done to the file's bytes, see bytes()
    reason: str | None = None
    may_pass: bool = False                     # damage that can leave a usable file

    def header(self) -> fits.Header:
        ny, nx = self.shape[-2:] if len(self.shape) > 1 else (1, self.shape[0])
        h = fits.Header({"TRIMSEC": f"[1:{nx - OVERSCAN},1:{ny}]", "BIASSEC": f"[{nx - OVERSCAN + 1}:{nx},1:{ny}]",
                         "GAIN": 1.5, "RDNOISE": 3.0, "SATURATE": SATURATE, "EXPID": f"fuzz_{self.seed}",
                         "MJD-OBS": 61000.5, "FIELD": "F0001", "TOO": False})
        for key, value in self.cards.items():
            if value is None:
                h.remove(key, ignore_missing=True)
            else:
                h[key] = value
        for i in range(self.history):
            h.add_history(f"huge header line {i}")
        return h

    def data(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        data = rng.normal(LEVEL, 3.0, self.shape)
        if self.pixels == "constant":
            data[:] = rng.integers(0, 100)
        elif self.pixels == "saturated":
            data[rng.random(self.shape) < self.fraction] = SATURATE + 10
        elif self.pixels in ("nan", "nonfinite"):
            values = [np.nan] if self.pixels == "nan" else [np.nan, np.inf, -np.inf]
            flat = data.reshape(-1)
            flat[rng.integers(0, flat.size, rng.integers(1, 20))] = rng.choice(values)
        return data.astype(self.dtype)

    def bytes(self) -> bytes:
        buf = io.BytesIO()
        if self.fpack:
            fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(self.data(), self.header())]).writeto(buf)
        else:
            fits.PrimaryHDU(self.data(), self.header()).writeto(buf)
        data = buf.getvalue()
        kind, *args = self.damage or ("",)
        if kind == "truncate":
            return data[: 1 + args[0] % (len(data) - 1)]
        if kind == "tail":
            return data + bytes(args[0])
        if kind == "magic":
            return b"SIMPLX" + data[6:]
        if kind == "patch":                    # rewrite a structural card of the first header
            key, value = args
            i = data.index(f"{key:<8}= ".encode())
            return data[:i] + f"{key:<8}= {value:>20}".ljust(80).encode() + data[i + 80:]
        if kind == "overwrite":
            at, junk = args
            at %= len(data)
            return data[:at] + junk[: len(data) - at] + data[at + len(junk):]
        return data

    def write(self, path: Path) -> Path:
        path.write_bytes(self.bytes())
        return path


def good_wcs():
    """Header cards of a valid TAN WCS: any pointing, rotation and pixel scale."""
    def cards(ra, dec, angle, scale):
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        return {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": ra, "CRVAL2": dec,
                "CRPIX1": NX / 2, "CRPIX2": NY / 2, "CDELT1": -scale, "CDELT2": scale,
                "PC1_1": c, "PC1_2": -s, "PC2_1": s, "PC2_2": c}
    return st.builds(cards, st.floats(0, 359.99), st.floats(-85, 85), st.floats(-180, 180), st.floats(1e-5, 1e-2))


#: ways to break a valid WCS
WCS_BREAKERS = st.one_of(
    st.sampled_from([{"CTYPE1": "RA---XXX"}, {"CTYPE2": "RA---TAN"}, {"CTYPE1": "GLON-TAN", "CTYPE2": "GLAT-TAN"},
                     {"CTYPE2": None}, {"CTYPE1": "FOO", "CTYPE2": "BAR"}, {"CDELT1": 0.0}, {"A_ORDER": 3},
                     {"PC1_1": 1.0, "PC1_2": 1.0, "PC2_1": 1.0, "PC2_2": 1.0}]),
    st.builds(lambda d: {"CRVAL2": d}, st.floats(90.5, 1e6) | st.floats(-1e6, -90.5)))

NOT_SAFE_IDS = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=140).filter(
    lambda s: not SAFE_ID.fullmatch(s.strip()))


@st.composite
def defective(draw, raw: Raw) -> Raw:
    """``raw`` with one defect drawn, and the reason it must be rejected with."""
    kind = draw(st.sampled_from(["truncate", "tail", "magic", "patch", "overwrite", "nan", "constant",
                                 "saturated", "shape", "number", "section", "wcs", "expid", "mjd", "too"]))
    if kind == "truncate":
        return replace(raw, damage=("truncate", draw(st.integers(0, 10**7))), reason=r"truncated|END card|2880-byte")
    if kind == "tail":
        return replace(raw, damage=("tail", draw(st.integers(1, 6000))), reason=r"2880-byte|garbage after")
    if kind == "magic":
        return replace(raw, damage=("magic",), reason=r"not a FITS file")
    if kind == "patch":
        key, value = draw(st.sampled_from([("BITPIX", v) for v in ("0", "7", "-16", "128", "'abc'")]
                                          + [("NAXIS", v) for v in ("-1", "1000", "2.5")]
                                          + [("NAXIS1", v) for v in ("-2880", "-1", "abc")]))
        return replace(raw, damage=("patch", key, value), reason=r"malformed header")
    if kind == "overwrite":
        junk = draw(st.binary(min_size=1, max_size=200))
        return replace(raw, damage=("overwrite", draw(st.integers(0, 10**7)), junk), reason=r".", may_pass=True)
    if kind == "nan":
        dtype = draw(st.sampled_from(("float32",) if raw.fpack else ("float32", "float64")))
        return replace(raw, dtype=dtype, pixels="nan" if raw.fpack else "nonfinite", reason=r"NaN or infinite")
    if kind == "constant":
        return replace(raw, pixels="constant", reason=r"no signal")
    if kind == "saturated":
        return replace(raw, pixels="saturated", fraction=draw(st.floats(0.6, 1.0)), reason=r"saturated|no signal")
    if kind == "shape":
        shape = draw(st.one_of(st.tuples(st.integers(1, 300)),
                               st.tuples(st.integers(1, 3), st.just(NY), st.just(NX)),
                               st.tuples(st.integers(1, 31), st.integers(OVERSCAN + 1, NX)),
                               st.tuples(st.integers(32, NY), st.integers(OVERSCAN + 1, OVERSCAN + 31))))
        return replace(raw, shape=shape, fpack=False, reason=r"no 2-D image HDU|smaller than")
    if kind == "number":
        key = draw(st.sampled_from(["GAIN", "SATURATE", "RDNOISE"]))
        bad = ["abc", "", "nan", "inf", "-3", -1.0, -1e300, True] + ([0.0] if key != "RDNOISE" else [])
        return replace(raw, cards={**raw.cards, key: draw(st.sampled_from(bad))}, reason=key)
    if kind == "section":
        cards = draw(st.sampled_from([{"TRIMSEC": v} for v in ("abc", "", "[1:60]", "[0:10,1:48]", "[a:b,c:d]",
                                                               "[1:10,1:10]", f"[1:{NX + 50},1:{NY}]")]
                                     + [{"BIASSEC": "[1:10,1:10]"}, {"TRIMSEC": None, "BIASSEC": None}]))
        return replace(raw, cards={**raw.cards, **cards}, reason=r"section|overscan|smaller than|TRIMSEC")
    if kind == "wcs":
        cards = {**draw(good_wcs()), **draw(WCS_BREAKERS)}
        return replace(raw, cards=cards, reason=r"WCS")
    if kind == "expid":
        return replace(raw, cards={**raw.cards, "EXPID": draw(NOT_SAFE_IDS)}, reason=r"exposure id")
    if kind == "mjd":
        bad = draw(st.sampled_from(["abc", "", "nan", -5.0, 0.0, 1e7, True]))
        return replace(raw, cards={**raw.cards, "MJD-OBS": bad}, reason=r"MJD-OBS")
    return replace(raw, cards={**raw.cards, "TOO": draw(st.sampled_from(["yes", "T", 2, 0.5]))}, reason=r"TOO")


@st.composite
def raw_frames(draw) -> Raw:
    """A good raw frame (any integer or real type, plain or fpack, huge header or not), half the time broken."""
    fpack = draw(st.booleans())
    raw = Raw(dtype=draw(st.sampled_from(FPACK_DTYPES if fpack else DTYPES)), fpack=fpack,
              seed=draw(st.integers(0, 2**16)), history=draw(st.sampled_from([0, 0, 0, 40, 1000])),
              cards=draw(st.just({}) | good_wcs()))
    return draw(st.just(raw) | defective(raw))


def ingest_and_reduce(path: Path, cfg: Settings):
    """What the watcher and the reduction stage do with a new file: its reduced frame, or the error."""
    check_complete(path)
    describe(path, CTX)
    return reduce_raw(path, None, cfg.reduction, cfg.detector)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


_count = itertools.count()


@settings(max_examples=80, **FUZZ)
@given(raw=raw_frames())
def test_a_raw_file_reduces_to_finite_pixels_or_is_rejected_with_its_reason(raw, workdir):
    path = raw.write(workdir / f"raw_{next(_count)}.fits{'.fz' if raw.fpack else ''}")
    try:
        frame = ingest_and_reduce(path, Settings())
    except REJECTED as exc:
        assert raw.reason is not None, f"a good frame was rejected: {exc}"
        assert re.search(raw.reason, str(exc)), f"reason {str(exc)!r} does not name the problem ({raw.reason})"
    else:
        assert raw.reason is None or raw.may_pass, f"bad frame accepted (should match {raw.reason})"
        assert np.isfinite(frame.data).all() and frame.data.shape == frame.mask.shape
        assert "CTYPE1" not in raw.cards or WCS(frame.header).has_celestial


@settings(max_examples=40, **FUZZ)
@given(dtype=st.sampled_from(["complex64", "complex128", "bool", "U3", "datetime64[s]"]),
       shape=st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_pixels_that_are_not_an_image_type_are_rejected(dtype, shape):
    with pytest.raises(BadFrameError, match="pixel type"):
        check_pixels(np.zeros(shape, dtype), "frame")


def test_a_negative_axis_length_in_an_extension_does_not_hang(workdir):
    """It used to send check_complete back to the extension's header, forever."""
    path = workdir / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((4, 2880), np.uint8))]).writeto(path)
    data = path.read_bytes()
    i = data.index(b"NAXIS1  = ", 2880)
    path.write_bytes(data[:i] + f"{'NAXIS1':<8}= {-2880:>20}".ljust(80).encode() + data[i + 80:])
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("check_complete hangs"))
    signal.alarm(10)
    try:
        with pytest.raises(IncompleteFile, match=r"HDU 1: malformed header \(negative"):
            check_complete(path)
    finally:
        signal.alarm(0)


# --------------------------------------------------------------------------------------
# WCS trouble on a simulated frame: reduction rejects an unusable WCS, astrometry a wrong one


@pytest.fixture
def solvable(small_night, night_settings):
    from ast3stream.catalogs.refcat import RefCat
    from ast3stream.sources import clean_star_list, extract

    cfg = night_settings("astrometry")
    path = small_night[1].exposures[0].path
    frame = reduce_raw(path, None, cfg.reduction, cfg.detector)
    stars = clean_star_list(extract(frame, cfg.sources), cfg.sources)
    return cfg, frame, stars, RefCat.from_file(cfg.refcat_path), fits.getheader(path)


@settings(max_examples=25, **{**FUZZ, "suppress_health_check": [HealthCheck.function_scoped_fixture]})
@given(shift_arcmin=st.floats(0, 5) | st.floats(0, 600), angle=st.floats(-1, 1) | st.floats(-30, 30),
       scale=st.floats(0.99, 1.01) | st.floats(0.3, 3.0), breaker=st.none() | WCS_BREAKERS)
def test_a_wrong_or_broken_header_wcs_is_rejected_with_its_reason(solvable, shift_arcmin, angle, scale, breaker):
    cfg, frame, stars, refcat, raw = solvable
    header = raw.copy()
    header["CRVAL2"] = float(np.clip(header["CRVAL2"] + shift_arcmin / 60, -89, 89))
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    pc = np.array([[c, -s], [s, c]]) @ np.array([[header["PC1_1"], header["PC1_2"]],
                                                  [header["PC2_1"], header["PC2_2"]]]) * scale
    header["PC1_1"], header["PC1_2"], header["PC2_1"], header["PC2_2"] = pc.ravel()
    for key, value in (breaker or {}).items():
        header.remove(key, ignore_missing=True) if value is None else header.set(key, value)
    try:
        wcs_header = _approximate_wcs(header, header["TRIMSEC"], "raw.fits")
    except BadFrameError as exc:
        assert breaker is not None and "unusable WCS" in str(exc)
        return
    assert breaker is None, f"broken WCS {breaker} accepted"
    try:
        wcs, stats = solve(replace(frame, header=wcs_header), stars, refcat, cfg.astrometry, cfg.detector)
    except AstrometryError as exc:
        assert str(exc)
        assert not (shift_arcmin < 3 and abs(angle) < 0.5 and abs(scale - 1) < 0.005), f"no solution: {exc}"
    else:
        assert np.isfinite(stats["rms_arcsec"]) and wcs.has_celestial


# --------------------------------------------------------------------------------------
# stream events


def texts(**kw):
    return st.text(st.characters(exclude_categories=("Cs",)), **kw)


def exposure_events():
    return st.builds(ExposureEvent, exposure_id=st.from_regex(SAFE_ID, fullmatch=True) | texts(max_size=20),
                     path=texts(max_size=40), sha256=texts(max_size=64), size=st.integers(-2**63, 2**63 - 1),
                     file_closed_at=st.floats(), detected_at=st.floats(),
                     field_id=st.none() | texts(max_size=8), mjd=st.none() | st.floats(), too=st.booleans(),
                     namespace=texts(max_size=8))


def stage_events():
    return st.builds(StageEvent, exposure_id=st.from_regex(SAFE_ID, fullmatch=True) | texts(max_size=20),
                     stage=texts(max_size=12), stage_version=texts(max_size=4),
                     lane=st.sampled_from(LANES), raw_path=texts(max_size=40),
                     file_closed_at=st.floats(), mjd=st.none() | st.floats(),
                     products=st.dictionaries(texts(max_size=8), texts(max_size=20), max_size=3),
                     metrics=st.dictionaries(texts(max_size=8), st.floats(), max_size=3),
                     flags=st.lists(texts(max_size=8), max_size=3))


def _problems(ev) -> list[str]:
    """The names of what is wrong with an event's values (what its rejection must name)."""
    d = asdict(ev)
    bad = [] if SAFE_ID.fullmatch(d["exposure_id"]) else ["exposure_id"]
    bad += ["field_id"] if d.get("field_id") is not None and not SAFE_ID.fullmatch(d["field_id"]) else []
    bad += [] if d.get("raw_path", d.get("path")) else ["path"]
    bad += [k for k in ("file_closed_at", "detected_at", "mjd") if d.get(k) is not None and not np.isfinite(d[k])]
    bad += [f"metric {k}" for k, v in d.get("metrics", {}).items() if not np.isfinite(v)]
    return bad


@settings(max_examples=150, **FUZZ)
@given(ev=exposure_events() | stage_events())
def test_an_event_decodes_to_trustworthy_values_or_is_rejected_naming_the_field(ev):
    cls = type(ev)
    problems = _problems(ev)
    if not problems:
        assert cls.decode(ev.encode()) == ev
        return
    with pytest.raises(MalformedMessage) as info:
        cls.decode(ev.encode())
    assert any(p in str(info.value) for p in problems), (str(info.value), problems)


@settings(max_examples=150, **FUZZ)
@given(ev=exposure_events() | stage_events(), cut=st.integers(1, 10**6), tail=st.binary(min_size=1, max_size=50))
def test_a_truncated_padded_or_misrouted_event_is_rejected(ev, cut, tail):
    cls = type(ev)
    data = ev.encode()
    other = StageEvent if cls is ExposureEvent else ExposureEvent
    for bad in (data[: len(data) - 1 - cut % (len(data) - 1)], data + tail, data[len(FRAME):]):
        with pytest.raises(MalformedMessage, match="cannot decode|trailing bytes|bad frame header|empty"):
            cls.decode(bad)
    with pytest.raises(MalformedMessage):
        other.decode(data)


@settings(max_examples=300, **FUZZ)
@given(data=st.binary(max_size=300), framed=st.booleans())
def test_random_bytes_are_never_an_event(data, framed):
    data = FRAME + data if framed else data
    for cls in (ExposureEvent, StageEvent):
        try:
            ev = cls.decode(data)
        except MalformedMessage as exc:
            assert str(exc)
        else:
            assert not _problems(ev)


# --------------------------------------------------------------------------------------
# alerts


@pytest.fixture(scope="module")
def alert_bytes() -> bytes:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.0, 2.0], [8.0, 8.0], [-0.41 / 3600, 0.41 / 3600]
    cutout = make_cutout(np.ones((16, 16), np.float32), w.to_header(), 8.0, 8.0, 7)
    cand = {"x": 8.0, "y": 8.0, "ra": 150.0, "dec": 2.0, "mag": 18.3, "mag_err": 0.05, "flux": 1.5e4,
            "flux_err": 300.0, "snr": 50.0, "sign": 1, "fwhm": 3.1, "elongation": 1.1, "rb": 0.93,
            "object_id": "A3deadbeef00", "ssnamenr": ""}
    meta = {"exposure_id": "e1", "lane": "dip", "mjd": 60500.1, "field_id": "F01", "model_version": "rb-1",
            "metrics": {"maglim": 20.6}, "stage_versions": {"classify": "1"}}
    return encode_alert(build_alert(cand, [], cand, dict.fromkeys(("science", "template", "difference"), cutout), meta))


@settings(max_examples=150, **FUZZ)
@given(cut=st.integers(1, 10**6), tail=st.binary(min_size=1, max_size=50), junk=st.binary(max_size=400),
       schema_id=st.integers(0, 2**32 - 1))
def test_a_damaged_alert_is_rejected(alert_bytes, cut, tail, junk, schema_id):
    assert decode_alert(alert_bytes)["candidate"]["magpsf"] == pytest.approx(18.3)
    for bad in (alert_bytes[: len(alert_bytes) - 1 - cut % (len(alert_bytes) - 1)], alert_bytes + tail,
                FRAME + alert_bytes[5:]):
        with pytest.raises(MalformedMessage, match="cannot decode|trailing bytes|bad frame"):
            decode_alert(bad)
    if schema_id not in {schema_id_of(v) for v in versions()}:
        with pytest.raises(MalformedMessage, match="unknown schema version"):
            decode_alert(b"\x00" + schema_id.to_bytes(4, "big") + alert_bytes[5:])
    for bad in (junk, alert_bytes[:5] + junk):
        try:
            decode_alert(bad)
        except MalformedMessage as exc:
            assert str(exc)


# --------------------------------------------------------------------------------------
# GW notices


def skymap_bytes(density=None, uniq=None, flat_nside=None, ordering="NUNIQ", image=False) -> bytes:
    """A multi-order map of HEALPix order 2 (uniform unless ``density`` is given), as FITS bytes."""
    buf = io.BytesIO()
    if image:
        fits.HDUList([fits.PrimaryHDU(np.zeros((3, 3)))]).writeto(buf)
        return buf.getvalue()
    if flat_nside is not None:
        n = 12 * 4**2
        hdu = fits.BinTableHDU(Table({"PROB": np.full(n, 1.0 / n)}))
        hdu.header.update({"ORDERING": ordering, "NSIDE": flat_nside})
    else:
        n = 12 * 4**2
        uniq = np.arange(4 * 4**2, 4 * 4**2 + n) if uniq is None else uniq
        density = np.full(len(uniq), 1 / (4 * np.pi)) if density is None else density
        hdu = fits.BinTableHDU(Table({"UNIQ": uniq, "PROBDENSITY": density}))
        hdu.header["ORDERING"] = ordering
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


def notice(**event) -> dict:
    return {"superevent_id": "S260101a", "alert_type": "PRELIMINARY", "time_created": "2026-01-01T00:00:00",
            "event": {"time": "2026-01-01T00:00:00", "far": 1e-9, "significant": True, "instruments": ["H1", "L1"],
                      "group": "CBC", "pipeline": "bayestar", "search": "AllSky",
                      "classification": {"BNS": 0.9, "Terrestrial": 0.1}, "properties": {"HasNS": 1.0},
                      "skymap": base64.b64encode(skymap_bytes()).decode(), **event}}


N = 12 * 4**2
WRONG_TYPES = st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
BAD_SKYMAPS = st.one_of(
    st.builds(lambda i: (skymap_bytes(density=np.where(np.arange(N) == i % N, np.nan, 1 / (4 * np.pi))),
                         "finite"), st.integers(0, N)),
    st.builds(lambda i: (skymap_bytes(density=np.where(np.arange(N) == i % N, -1.0, 1 / (4 * np.pi))),
                         "non-negative"), st.integers(0, N)),
    st.builds(lambda f: (skymap_bytes(density=np.full(N, f / (4 * np.pi))), "add up to"),
              st.floats(0, 0.98) | st.floats(1.02, 1e6)),
    st.builds(lambda nside: (skymap_bytes(flat_nside=nside, ordering="RING"), "NSIDE"),
              st.sampled_from([0, -4, 3, 5, 6, 2**30])),
    st.builds(lambda nside: (skymap_bytes(flat_nside=nside, ordering="NESTED"), "pixels"),
              st.sampled_from([1, 2, 8, 1024])),
    st.builds(lambda u: (skymap_bytes(uniq=np.full(N, u)), "UNIQ"), st.integers(-2**40, 3)),
    st.just((skymap_bytes(image=True), "no binary table")),
    st.just((skymap_bytes(ordering="RUBBISH"), "NSIDE")),
    st.builds(lambda b: (b, "not a FITS sky map"),
              st.binary(min_size=1, max_size=300).filter(lambda b: not b.startswith(b"SIMPLE"))),
    st.builds(lambda b: (b"\x1f\x8b" + b, "not a FITS sky map"), st.binary(max_size=100)))


@st.composite
def bad_notices(draw) -> tuple[bytes, str]:
    """A GW notice with one thing wrong, and the regex its rejection must match."""
    d = notice()
    kind = draw(st.sampled_from(["missing", "type", "alert_type", "event", "base64", "skymap", "bytes", "cut"]))
    if kind == "missing":
        key = draw(st.sampled_from(["superevent_id", "alert_type"]))
        del d[key]
        return json.dumps(d).encode(), f"{key} is missing"
    if kind == "type":
        key = draw(st.sampled_from(["superevent_id", "alert_type", "event"]))
        d[key] = draw(WRONG_TYPES.filter(lambda v: not isinstance(v, dict) or key != "event"))
        return json.dumps(d).encode(), key
    if kind == "alert_type":
        d["alert_type"] = draw(st.text(max_size=12).filter(lambda s: s.upper() not in ALERT_TYPES))
        return json.dumps(d).encode(), "alert type"
    if kind == "event":
        key, value, reason = draw(st.sampled_from([
            ("far", "abc", "far"), ("far", -1.0, "far"), ("far", [1], "far"), ("time", "yesterday", "time"),
            ("time", 5, "time"), ("classification", [1, 2], "classification"),
            ("classification", {"BNS": "x"}, "classification"), ("properties", "HasNS", "properties"),
            ("instruments", [1, 2], "instruments"), ("instruments", "H1", "instruments"),
            ("skymap", 12, "skymap"), ("significant", "yes", "significant"), ("group", 3, "group")]))
        d["event"][key] = value
        return json.dumps(d).encode(), reason
    if kind == "base64":
        text = d["event"]["skymap"]
        at = draw(st.integers(0, len(text)))
        d["event"]["skymap"] = text[:at] + draw(st.sampled_from("!@#$%^&*()~ \n")) + text[at:]
        return json.dumps(d).encode(), "base64"
    if kind == "skymap":
        data, reason = draw(BAD_SKYMAPS)
        d["event"]["skymap"] = base64.b64encode(data).decode()
        return json.dumps(d).encode(), f"bad sky map: .*{reason}"
    if kind == "bytes":
        return draw(st.binary(max_size=200)), "."
    text = json.dumps(d)
    return text[: draw(st.integers(0, len(text) - 1))].encode(), "JSON|neither"


@settings(max_examples=150, **FUZZ)
@given(case=bad_notices())
def test_a_bad_gw_notice_is_rejected_with_its_reason(case):
    data, reason = case
    with pytest.raises(BadNotice) as info:
        read_notice(data)
    assert isinstance(info.value, MalformedMessage)
    assert re.search(reason, str(info.value)), (str(info.value), reason)


def test_a_good_gw_notice_reads():
    n = read_notice(json.dumps(notice()).encode())
    assert (n.superevent_id, n.alert_type, n.far) == ("S260101a", "PRELIMINARY", 1e-9)
    assert probabilities(n.skymap).sum() == pytest.approx(1.0)


def test_too_ingest_of_a_bad_notice_is_a_clear_cli_error(tmp_path, capsys):
    from ast3stream.cli import main

    path = tmp_path / "notice.json"
    path.write_text(json.dumps({**notice(), "alert_type": "SOMETIME"}))
    assert main(["--data-dir", str(tmp_path / "run"), "too", "ingest", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: S260101a: alert type 'SOMETIME'") and "Traceback" not in err


# --------------------------------------------------------------------------------------
# the running stack: every bad input dead-lettered once, the worker alive, a good exposure alerts


BAD_FILES = {
    "fz_truncated.fits": Raw(seed=1, damage=("truncate", 4000)),
    "fz_notfits.fits": Raw(seed=2, damage=("magic",)),
    "fz_negaxis.fits": Raw(seed=3, fpack=True, damage=("patch", "NAXIS1", "-2880")),
    "fz_nan.fits": Raw(seed=4, dtype="float32", pixels="nonfinite"),
    "fz_zero.fits": Raw(seed=5, pixels="constant"),
    "fz_saturated.fits": Raw(seed=6, pixels="saturated", fraction=0.8),
    "fz_cube.fits": Raw(seed=7, shape=(2, NY, NX)),
    "fz_wcs.fits": Raw(seed=8, cards={"CTYPE1": "RA---XXX", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 20.0}),
    "fz_expid.fits": Raw(seed=9, cards={"EXPID": "../../escape"}),
    "fz_mjd.fits": Raw(seed=10, cards={"MJD-OBS": "yesterday"}),
}


def _bad_messages(prefix: str) -> list[tuple[str, bytes]]:
    """(topic, value) of bad messages produced straight onto the stage and GW topics."""
    def stage(**kw):
        return StageEvent(**{"exposure_id": "fz_msg", "stage": "reduction", "stage_version": "1", "lane": "dip",
                             "raw_path": "/nonexistent.fits", "file_closed_at": time.time(), **kw})
    skymap = base64.b64encode(skymap_bytes(density=np.full(N, np.nan))).decode()
    return [
        (f"{prefix}.exposures", b"\x00\x01random bytes"),
        (f"{prefix}.reduction.dip", stage(exposure_id="fz_cut").encode()[:-7]),
        (f"{prefix}.sources.dip", stage(exposure_id="../../fz_escape").encode()),
        (f"{prefix}.quality.dip", stage(exposure_id="fz_nan_metric", metrics={"zp": float("nan")}).encode()),
        (f"{prefix}.astrometry.dip", stage(exposure_id="fz_noproducts").encode()),
        (f"{prefix}.gw", json.dumps({**notice(), "event": {**notice()["event"], "skymap": "!!"}}).encode()),
        (f"{prefix}.gw", json.dumps(notice(skymap=skymap)).encode()),
        (f"{prefix}.gw", b"\xff\xfe not a notice"),
    ]


async def _produce(bootstrap: str, messages: list[tuple[str, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for name, value in messages:
            await producer.send_and_wait(name, value)
    finally:
        await producer.stop()


def _origin(d: dict):
    """What a dead letter is about: a file's name, or the raw message."""
    if d["source_topic"] == "watcher":
        return Path(d["value"].decode()).name
    try:
        return Path(ExposureEvent.decode(d["value"]).path).name
    except MalformedMessage:
        return d["value"]


@pytest.mark.slow
@pytest.mark.broker
def test_a_running_stack_dead_letters_every_bad_input_once_and_still_alerts(broker, small_night, night_settings):
    from agents.demo import play, read_topic
    from agents.runner import Stack, lanes_done
    from agents.topics import topic
    from agents.db import Database
    from ast3stream.events import decode

    cfg = night_settings("stream", kafka={"prefix": "fuzz", "bootstrap": broker.bootstrap},
                         watcher={"stable_s": 0.5, "giveup_s": 2.0})
    template, science = (Path(e.path) for e in small_night[1].exposures[:2])
    messages = _bad_messages("fuzz")
    with Stack(cfg) as stack:
        db = Database.from_settings(cfg)
        play([template, science], cfg.watch_dir)
        for name, raw in BAD_FILES.items():
            raw.write(cfg.watch_dir / f".{name}.part").replace(cfg.watch_dir / name)
        asyncio.run(_produce(broker.bootstrap, messages))
        expected = len(BAD_FILES) + len(messages)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (db.count("dead_letters") >= expected
                                                   and lanes_done(db, science.stem)):
            stack.check_workers()
            time.sleep(0.5)
        time.sleep(1.0)  # anything dead-lettered twice would show now
        stack.check_workers()
        dead = [decode(m.value, "deadletter") for m in
                asyncio.run(read_topic(broker.bootstrap, topic("fuzz", "deadletter"), 2.0))]
        runs = {(r["stage"], r["status"]) for r in db.rows("stage_runs", exposure_id=science.stem)}
        assert all(p.poll() is None for p in stack.procs), "a worker died"
    origins = Counter(_origin(d) for d in dead)
    assert origins == Counter([*BAD_FILES, *(value for _, value in messages)]), origins
    assert all(d["reason"].strip() for d in dead)
    reasons = {_origin(d): d["reason"] for d in dead}
    assert "malformed header" in reasons["fz_negaxis.fits"] and "NaN or infinite" in reasons["fz_nan.fits"]
    assert "exposure id" in reasons["fz_expid.fits"] and "unusable WCS" in reasons["fz_wcs.fits"]
    assert "bad sky map" in reasons[messages[6][1]] and "metric zp = nan" in reasons[messages[3][1]]
    assert ("alert", "done") in runs, runs
    assert db.rows("exposures", exposure_id=science.stem)[0]["status"] == "alerted"
