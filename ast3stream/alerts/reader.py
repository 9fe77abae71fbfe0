"""One view of alerts from several surveys: ours, ZTF (schemas 1.8-4.x), Rubin (LSST schemas
7-11), ATLAS, DECam (DESIRT), PGIR and WINTER, whatever container they come in.

:func:`view` maps a decoded alert record to :class:`AlertView`; :func:`read_alerts` reads a file
or every alert file below a folder. Containers: Avro object-container files (any codec fastavro
knows, snappy through cramjam; Spark's ``x.avro/part-*.avro`` folders are just folders), Kafka
wire framing (magic byte 0, 4-byte big-endian schema id, schema-less Avro: the id ``MMmm`` names
the Rubin schema ``MM.mm``, read from a ``schemas/rubin/MM/mm`` folder; when that exact version is
absent the nearest one that decodes the whole payload is used), Parquet tables (a row per alert:
rows without a ``candidate`` or ``diaSource`` are not alerts and are skipped) and ``.tar.gz``
archives of Avro files. The survey is recognised from the record's content, not the writer's schema
name (brokers rename it: ``topLevelRecord``).

Survey conventions handled: Julian dates become MJD; ZTF's ``ssnamenr`` placeholders ('null',
'NONE') and -999 distances and -1006 limits become None; a ZTF host is the nearest Pan-STARRS source within 3 arcsec
when it is galaxy-like (``sgscore1 < 0.5``); ``score`` is the producer's own real/bogus (ZTF ``drb``
when present else ``rb``, Rubin/DECam ``reliability``, ATLAS the transient+variable+mover+known
share of its classifier votes) and ``scores`` all of them by name.

:func:`stamp_triplet` decodes an alert's cutouts into a survey-independent :class:`Triplet`
(science, template, difference, the difference's sigma map when the producer ships one, PSF FWHM
in pixels, pixel scale, sign) for :func:`ast3stream.classify.stamps.make_stamp`.
"""
from __future__ import annotations

import hashlib
import io
import math
import struct
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import fastavro
import fastavro.schema

JD_MJD = 2400000.5
ZTF_FILTERS = {1: "ztfg", 2: "ztfr", 3: "ztfi"}
WINTER_FILTERS = {0: "Y", 1: "J", 2: "H", 3: "K"}   # per WINTER's schema doc of fid
HOST_RADIUS_ARCSEC = 3.0
ATLAS_REAL_VOTES = ("Pvr", "Ptr", "Pmv", "Pkn")      # variable, transient, mover, known; the rest are artefacts
ATLAS_VOTES = ATLAS_REAL_VOTES + ("Pno", "Pbn", "Pcr", "Pxt", "Psc")
#: pixel scale (arcsec/px) and typical seeing (arcsec) where an alert does not carry its frame's PSF
SURVEY_OPTICS = {"ztf": (1.012, 2.0), "rubin": (0.2, 0.8), "atlas": (1.86, 3.8), "decam": (0.263, 1.1),
                 "pgir": (8.7, 15.0), "winter": (1.09, 2.5)}
ALERT_SUFFIXES = (".avro", ".parquet", ".tar.gz", ".tgz")


@dataclass
class AlertView:
    """What a subscriber needs from any survey's alert; ``record`` keeps the original."""

    survey: str
    object_id: str
    candid: int
    mjd: float
    ra: float
    dec: float
    mag: float | None
    mag_err: float | None
    filter: str
    isdiffpos: bool
    score: float | None = None
    maglim: float | None = None
    ssnamenr: str | None = None
    ss_sep_arcsec: float | None = None
    has_host: bool | None = None
    gw_event: str | None = None
    gw_credible_level: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    fwhm_px: float | None = None          #: the frame's PSF FWHM in pixels, when the alert says it
    cutouts: dict[str, bytes] = field(default_factory=dict, repr=False)
    history: list[dict] = field(default_factory=list, repr=False)
    record: dict = field(default_factory=dict, repr=False)


@dataclass
class Triplet:
    """An alert's stamps on one pixel grid; ``sigma`` is the difference's 1-sigma map or None."""

    science: np.ndarray
    template: np.ndarray | None
    difference: np.ndarray
    sigma: np.ndarray | None
    fwhm_px: float
    pixel_scale: float | None
    positive: bool


def survey_of(alert: Mapping, schema_name: str | None = None) -> str:
    """``ast3stream``, ``ztf``, ``rubin``, ``atlas``, ``decam``, ``pgir`` or ``winter``."""
    name = (schema_name or "").split(".")[0]
    if "alertId" in alert or name == "ast3stream":
        return "ast3stream"
    if "diaSource" in alert or name == "lsst":
        return "rubin"
    if "objectid" in alert or "cutout_science" in alert or name == "winter":
        return "winter"
    c = alert.get("candidate") or {}
    publisher = str(alert.get("publisher", "")).lower()
    if name == "atlas" or publisher.startswith("atlas") or "Pvr" in c:
        return "atlas"
    if name == "desirt" or "reliability" in c:
        return "decam"
    if name == "pgir" or publisher.startswith("pgir") or str(alert.get("objectId", "")).startswith("PGIR"):
        return "pgir"
    return "ztf"


def view(alert: Mapping, survey: str | None = None) -> AlertView:
    """The common view of one decoded alert record (any supported survey)."""
    survey = survey or survey_of(alert)
    if survey == "ast3stream":
        return _ours(alert)
    if survey == "rubin":
        return _rubin(alert)
    c = alert["candidate"]
    if survey == "atlas":
        return _atlas(alert)
    if survey == "winter":
        oid, prefix = alert["objectid"], "cutout_"
    else:
        oid, prefix = alert["objectId"], "cutout"
    cutouts = {k: _stamp(alert.get(prefix + (k if survey == "winter" else k.title())))
               for k in ("science", "template", "difference")}
    ss, ss_sep = _valid(c.get("ssnamenr")), _nonneg(c.get("ssdistnr"))
    dist1, sg1 = _nonneg(c.get("distpsnr1")), _nonneg(c.get("sgscore1"))
    has_host = None if dist1 is None or sg1 is None else bool(dist1 <= HOST_RADIUS_ARCSEC and sg1 < 0.5)
    history = [{"mjd": p["jd"] - JD_MJD, "mag": p.get("magpsf"), "mag_err": p.get("sigmapsf"),
                "maglim": _nonneg(p.get("diffmaglim")), "filter": _filter(survey, p.get("fid"))}
               for p in (alert.get("prv_candidates") or [])]
    scores = {k: float(c[k]) for k in ("rb", "drb", "reliability") if c.get(k) is not None}
    if survey == "ztf" and scores.get("drb") == 0.0 and "drb" in scores and c.get("rb", 0) > 0:
        del scores["drb"]        # schemas < 3.3 fill drb with 0.0: not a score
    score = scores.get("reliability", scores.get("drb", scores.get("rb")))
    mjd = c["mjd"] if "mjd" in c else c["jd"] - JD_MJD
    return AlertView(
        survey=survey, object_id=str(oid), candid=int(c.get("candid") or alert["candid"]), mjd=mjd,
        ra=c["ra"], dec=c["dec"], mag=c.get("magpsf"), mag_err=c.get("sigmapsf"),
        filter=_filter(survey, c.get("fid", c.get("band"))), isdiffpos=c["isdiffpos"] in (True, "t", "1", 1),
        score=score, scores=scores, maglim=c.get("diffmaglim"),
        ssnamenr=ss, ss_sep_arcsec=ss_sep if ss else None, has_host=has_host,
        cutouts={k: v for k, v in cutouts.items() if v}, history=history, record=dict(alert))


def _rubin(alert: Mapping) -> AlertView:
    s = alert["diaSource"]
    flux, err = s.get("psfFlux"), s.get("psfFluxErr")
    mag = 31.4 - 2.5 * math.log10(abs(flux)) if flux else None          # nJy -> AB
    cutouts = {k: alert.get(f"cutout{k.title()}") for k in ("science", "template", "difference")}
    scores = {"reliability": float(s["reliability"])} if s.get("reliability") is not None else {}
    ixx, iyy = s.get("ixxPSF"), s.get("iyyPSF")
    # PSF second moments in arcsec^2 (the schema's doc says nJy arcsec^2; the values are arcsec^2)
    fwhm = 2.3548 * math.sqrt((ixx + iyy) / 2) / SURVEY_OPTICS["rubin"][0] if ixx and iyy and ixx > 0 and iyy > 0 else None
    history = [{"mjd": p["midpointMjdTai"], "mag": 31.4 - 2.5 * math.log10(abs(p["psfFlux"])) if p.get("psfFlux") else None,
                "mag_err": None, "maglim": None, "filter": p.get("band")}
               for p in (alert.get("prvDiaSources") or [])]
    return AlertView(
        survey="rubin", object_id=str(s.get("diaObjectId") or s.get("ssObjectId") or s["diaSourceId"]),
        candid=int(s["diaSourceId"]), mjd=float(s["midpointMjdTai"]), ra=s["ra"], dec=s["dec"],
        mag=mag, mag_err=1.0857 * err / abs(flux) if flux and err else None, filter=str(s.get("band")),
        isdiffpos=not s.get("isNegative", (flux or 0) < 0), score=scores.get("reliability"), scores=scores,
        fwhm_px=fwhm, cutouts={k: v for k, v in cutouts.items() if v}, history=history, record=dict(alert))


def _atlas(alert: Mapping) -> AlertView:
    c = alert["candidate"]
    votes = [c.get(k) or 0 for k in ATLAS_VOTES]
    scores = {"atlas_real": sum(votes[:len(ATLAS_REAL_VOTES)]) / sum(votes)} if sum(votes) > 0 else {}
    cutouts = {k: _stamp(alert.get(f"cutout{k.title()}")) for k in ("science", "template", "difference")}
    return AlertView(
        survey="atlas", object_id=str(alert["objectId"]), candid=int(hashlib.sha1(str(c["candid"]).encode()).hexdigest()[:15], 16),
        mjd=float(c["mjd"]), ra=c["RA"], dec=c["Dec"], mag=c.get("Mag"), mag_err=c.get("Dmag"),
        filter=str(c.get("filter")), isdiffpos=c["isdiffpos"] in (True, "t", "1", 1),
        score=scores.get("atlas_real"), scores=scores, cutouts={k: v for k, v in cutouts.items() if v},
        record=dict(alert))


def _ours(alert: Mapping) -> AlertView:
    """Our packets (schema 2.x: ZTF field names, see ``ast3stream/schemas/alert/CHANGES.md``)."""
    c, x = alert["candidate"], alert.get("crossmatch") or {}
    cutouts = {k: alert[f"cutout{k.title()}"]["stampData"] for k in ("science", "template", "difference")
               if alert.get(f"cutout{k.title()}")}
    history = [{"mjd": p["jd"] - JD_MJD, "mag": p.get("magpsf"), "mag_err": p.get("sigmapsf"),
                "maglim": p.get("diffmaglim"), "filter": p.get("band")}
               for p in (alert.get("prv_candidates") or [])]
    return AlertView(
        survey="ast3stream", object_id=alert["objectId"], candid=alert["candid"], mjd=c["jd"] - JD_MJD,
        ra=c["ra"], dec=c["dec"], mag=c["magpsf"], mag_err=c["sigmapsf"], filter=c["band"],
        isdiffpos=c["isdiffpos"] == "t", score=c.get("drb"), scores={"drb": c["drb"]} if c.get("drb") is not None else {},
        maglim=c.get("diffmaglim"),
        ssnamenr=c.get("ssnamenr"), ss_sep_arcsec=c.get("ssdistnr"),
        has_host=x.get("host_id") is not None, gw_event=x.get("gw_event"),
        gw_credible_level=x.get("gw_credible_level"), fwhm_px=c.get("fwhm"), cutouts=cutouts, history=history,
        record=dict(alert))


# --- containers --------------------------------------------------------------------------------

def alert_files(source: str | Path) -> list[Path]:
    """The alert files below a folder (Avro, Parquet, tar.gz), or ``[source]`` for a file."""
    source = Path(source)
    if not source.is_dir():
        return [source]
    return sorted(p for p in source.rglob("*") if p.is_file() and p.name.endswith(ALERT_SUFFIXES))


def read_records(path: str | Path, schema_dir: str | Path | None = None) -> Iterator[tuple[dict, str | None]]:
    """``(record, writer schema name)`` of every alert in one file of any supported container."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        yield from _parquet(path)
    elif path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".avro"):
                    yield from _avro_bytes(tar.extractfile(member).read(), path, schema_dir)
    else:
        yield from _avro_bytes(path.read_bytes(), path, schema_dir)


def read_alerts(source: str | Path, schema_dir: str | Path | None = None) -> Iterator[AlertView]:
    """Views of every alert in a file, or in every alert file below a folder (module docstring).

    ``schema_dir`` holds the schemas of wire-framed messages (``rubin/MM/mm/*.alert.avsc``);
    default: the first ``schemas`` folder beside one of the file's parent folders.
    """
    for path in alert_files(source):
        for record, name in read_records(path, schema_dir):
            yield view(record, survey_of(record, name))


def _avro_bytes(data: bytes, path: Path, schema_dir) -> Iterator[tuple[dict, str | None]]:
    if data[:4] == b"Obj\x01":
        reader = fastavro.reader(io.BytesIO(data))
        name = reader.writer_schema.get("name")
        for record in reader:
            yield record, name
    elif data[:1] == b"\x00" and len(data) > 5:
        schema_id = struct.unpack(">I", data[1:5])[0]
        yield _wire(data[5:], schema_id, path, schema_dir), "lsst"
    else:
        raise ValueError(f"{path}: neither an Avro container nor a wire-framed message (starts {data[:4]!r})")


def _wire(payload: bytes, schema_id: int, path: Path, schema_dir) -> dict:
    """A schema-less Rubin message: the exact schema version, else the nearest that decodes it all."""
    root = Path(schema_dir) if schema_dir else next(
        (p / "schemas" for p in path.resolve().parents if (p / "schemas" / "rubin").is_dir()), None)
    if root is None:
        raise FileNotFoundError(f"{path}: wire-framed (schema id {schema_id}) and no schemas/rubin folder found")
    major, minor = divmod(schema_id, 100)
    files = sorted((root / "rubin").glob("*/*/lsst.v*_*.alert.avsc"),
                   key=lambda f: abs(int(f.parent.parent.name) * 100 + int(f.parent.name) - schema_id))
    for f in files:
        buf = io.BytesIO(payload)
        try:
            record = fastavro.schemaless_reader(buf, fastavro.schema.load_schema(str(f)), None)
        except (ValueError, IndexError, EOFError, KeyError, TypeError, UnicodeDecodeError, MemoryError, OverflowError):
            continue
        if buf.tell() == len(payload):
            return record
    raise ValueError(f"{path}: no Rubin schema under {root / 'rubin'} decodes schema id {schema_id} "
                     f"(v{major}.{minor})")


def _parquet(path: Path) -> Iterator[tuple[dict, str | None]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if not {"candidate", "diaSource"} & set(table.schema.names):
        return
    for batch in table.to_batches(64):
        for record in batch.to_pylist():
            if record.get("candidate") or record.get("diaSource"):
                yield record, None


# --- stamps ----------------------------------------------------------------------------------

def stamp_triplet(v: AlertView) -> Triplet | None:
    """The alert's cutouts as one :class:`Triplet`, or None without science and difference stamps
    of one shape. Rubin's ``UNCERT`` extension (a variance) gives the sigma map; the PSF FWHM is
    the alert's own (Rubin ``ixxPSF``/``iyyPSF``, our ``fwhm``), else the survey's typical seeing."""
    from .cutouts import read_cutout

    if "science" not in v.cutouts or "difference" not in v.cutouts:
        return None
    sci, sci_h = read_cutout(v.cutouts["science"])
    dif, _ = read_cutout(v.cutouts["difference"])
    tmp = read_cutout(v.cutouts["template"])[0] if "template" in v.cutouts else None
    if sci.shape != dif.shape or (tmp is not None and tmp.shape != dif.shape) or min(dif.shape) < 8:
        return None
    sigma = _variance_sigma(v.cutouts["difference"]) if v.survey == "rubin" else None
    scale, seeing = SURVEY_OPTICS.get(v.survey, (None, None))
    if v.survey == "ast3stream":
        scale = _header_scale(sci_h)
    fwhm = v.fwhm_px if v.fwhm_px and math.isfinite(v.fwhm_px) else (seeing / scale if seeing else 3.0)
    return Triplet(sci, tmp, dif, sigma if sigma is not None and sigma.shape == dif.shape else None,
                   float(fwhm), scale, v.isdiffpos)


def _variance_sigma(stamp: bytes) -> np.ndarray | None:
    import gzip
    import warnings

    import numpy as np
    from astropy.io import fits

    if stamp[:2] == b"\x1f\x8b":
        stamp = gzip.decompress(stamp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(stamp)) as hdul:
            for hdu in hdul[1:]:
                if hdu.name == "UNCERT" and hdu.data is not None:
                    var = np.asarray(hdu.data, np.float32)
                    if "Variance" in str(hdu.header.get("UTYPE", "Variance")):
                        return np.sqrt(np.where(var > 0, var, np.nan))
                    return var
    return None


def _header_scale(header) -> float | None:
    import warnings

    import numpy as np
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header)
        except Exception:  # noqa: BLE001 - a stamp without a usable WCS just has no scale
            return None
    return float(np.sqrt(abs(np.linalg.det(w.pixel_scale_matrix))) * 3600) if w.has_celestial else None


def _filter(survey: str, fid) -> str:
    if survey == "pgir":
        return "J"
    if isinstance(fid, str):
        return fid
    names = WINTER_FILTERS if survey == "winter" else ZTF_FILTERS
    return names.get(fid, str(fid))


def _stamp(cutout) -> bytes | None:
    """Stamp bytes from a ZTF-style ``{fileName, stampData}`` record or plain bytes."""
    return cutout.get("stampData") if isinstance(cutout, Mapping) else cutout


def _valid(name) -> str | None:
    return None if name is None or str(name).strip() in ("", "null", "NONE", "None") else str(name)


def _nonneg(value) -> float | None:
    return None if value is None or value < 0 else float(value)
