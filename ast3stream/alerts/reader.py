"""One view of alerts from several surveys: ours, ZTF (schemas 1.8-4.x), PGIR and WINTER.

:func:`view` maps a decoded alert record to :class:`AlertView`; :func:`read_alerts` reads
Avro container files (or a folder of them) and yields views. Survey conventions handled:
Julian dates become MJD; ZTF's ``ssnamenr`` placeholders ('null', 'NONE') and -999
distances become None; a ZTF host is the nearest Pan-STARRS source within 3 arcsec when it is
galaxy-like (``sgscore1 < 0.5``), the usual ZTF extragalactic cut; the score is the deep
real/bogus ``drb`` when present, else ``rb``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import fastavro

JD_MJD = 2400000.5
ZTF_FILTERS = {1: "ztfg", 2: "ztfr", 3: "ztfi"}
WINTER_FILTERS = {0: "Y", 1: "J", 2: "H", 3: "K"}   # per WINTER's schema doc of fid
HOST_RADIUS_ARCSEC = 3.0


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
    cutouts: dict[str, bytes] = field(default_factory=dict, repr=False)
    history: list[dict] = field(default_factory=list, repr=False)
    record: dict = field(default_factory=dict, repr=False)


def survey_of(alert: Mapping, schema_name: str | None = None) -> str:
    """``ast3stream``, ``ztf``, ``pgir`` or ``winter`` from the schema name or the record's keys."""
    if schema_name:
        return schema_name.split(".")[0]
    if "alertId" in alert:
        return "ast3stream"
    if "objectid" in alert or "cutout_science" in alert:
        return "winter"
    if str(alert.get("publisher", "")).lower().startswith("pgir") or str(alert.get("objectId", "")).startswith("PGIR"):
        return "pgir"
    return "ztf"


def view(alert: Mapping, survey: str | None = None) -> AlertView:
    """The common view of one decoded alert record (any supported survey)."""
    survey = survey or survey_of(alert)
    if survey == "ast3stream":
        return _ours(alert)
    c = alert["candidate"]
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
                "maglim": p.get("diffmaglim"), "filter": _filter(survey, p.get("fid"))}
               for p in (alert.get("prv_candidates") or [])]
    return AlertView(
        survey=survey, object_id=str(oid), candid=int(c["candid"]), mjd=c["jd"] - JD_MJD,
        ra=c["ra"], dec=c["dec"], mag=c.get("magpsf"), mag_err=c.get("sigmapsf"),
        filter=_filter(survey, c.get("fid")), isdiffpos=c["isdiffpos"] in (True, "t", "1"),
        score=c["drb"] if c.get("drb") is not None else c.get("rb"), maglim=c.get("diffmaglim"),
        ssnamenr=ss, ss_sep_arcsec=ss_sep if ss else None, has_host=has_host,
        cutouts={k: v for k, v in cutouts.items() if v}, history=history, record=dict(alert))


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
        isdiffpos=c["isdiffpos"] == "t", score=c.get("drb"), maglim=c.get("diffmaglim"),
        ssnamenr=c.get("ssnamenr"), ss_sep_arcsec=c.get("ssdistnr"),
        has_host=x.get("host_id") is not None, gw_event=x.get("gw_event"),
        gw_credible_level=x.get("gw_credible_level"), cutouts=cutouts, history=history, record=dict(alert))


def read_alerts(source: str | Path) -> Iterator[AlertView]:
    """Views of every alert in an Avro file, or in every ``*.avro`` below a folder."""
    source = Path(source)
    paths = sorted(source.rglob("*.avro")) if source.is_dir() else [source]
    for path in paths:
        with open(path, "rb") as fh:
            reader = fastavro.reader(fh)
            survey = survey_of({}, reader.writer_schema.get("name"))
            for record in reader:
                yield view(record, survey)


def _filter(survey: str, fid) -> str:
    if survey == "pgir":
        return "J"
    names = WINTER_FILTERS if survey == "winter" else ZTF_FILTERS
    return names.get(fid, str(fid))


def _stamp(cutout) -> bytes | None:
    """Stamp bytes from a ZTF-style ``{fileName, stampData}`` record or plain bytes."""
    return cutout.get("stampData") if isinstance(cutout, Mapping) else cutout


def _valid(name) -> str | None:
    return None if name is None or str(name).strip() in ("", "null", "NONE", "None") else str(name)


def _nonneg(value) -> float | None:
    return None if value is None or value < 0 else float(value)
