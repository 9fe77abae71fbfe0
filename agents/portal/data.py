"""What the portal shows, read from the database (plain, JSON-ready dicts; no HTML here).

Every page of the portal is one of these functions rendered by a template, and the same
function answers the page's JSON endpoint. Unknown ids raise :class:`NotFound`, bad query
parameters :class:`BadRequest` (the portal answers 404 and 400 with the reason).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from agents.db import Database
from agents.replay import night_of
from ast3stream.pipeline import BACK, FRONT

#: stages shown per lane on the night and exposure pages, in chain order
FRONT_STAGES = tuple(s.name for s in FRONT)
BACK_STAGES = tuple(s.name for s in BACK)
#: exposure quality values shown (``exposures.quality``)
QUALITY_KEYS = ("fwhm_px", "maglim", "zp", "pcc", "cloud_prob", "n_stars", "astrometry_rms_arcsec")
SORTS = ("mjd", "score", "mag", "snr")
#: cross-match values of a candidate (``candidates.extra``, written by the alert stage)
CROSSMATCH_KEYS = ("host_id", "host_sep_arcsec", "host_dist_mpc", "ssnamenr", "var_name", "tns_name")


class NotFound(LookupError):
    """No such exposure, candidate, object, event or dead letter."""


class BadRequest(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _row(r) -> dict:
    return {k: _finite(v) for k, v in dict(r._mapping).items()}


def _select(db: Database, stmt) -> list[dict]:
    with db.engine.connect() as conn:
        return [_row(r) for r in conn.execute(stmt)]


# -- night and exposures ---------------------------------------------------------------

def night_range(name: str) -> tuple[float, float]:
    """The MJD interval of observing night ``YYYYMMDD`` (see :func:`agents.replay.night_of`)."""
    try:
        day = datetime.strptime(name, "%Y%m%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise BadRequest(f"night {name!r}: expected YYYYMMDD") from None
    mjd = day.timestamp() / 86400.0 + 40587.0
    return mjd + 0.5, mjd + 1.5


def nights(db: Database) -> list[dict]:
    """Every observing night with its number of exposures, latest first."""
    tab = db.t["exposures"]
    counts: dict[str, int] = {}
    for r in _select(db, sa.select(tab.c.mjd)):
        n = night_of(r["mjd"]) or "unknown"
        counts[n] = counts.get(n, 0) + 1
    return [{"night": n, "exposures": c} for n, c in sorted(counts.items(), reverse=True)]


def _stage_runs(db: Database, exposure_ids: list[str]) -> dict[str, list[dict]]:
    runs = db.t["stage_runs"]
    out: dict[str, list[dict]] = {}
    if exposure_ids:
        for r in _select(db, sa.select(runs).where(runs.c.exposure_id.in_(exposure_ids))):
            r["seconds"] = None if r["end"] is None or r["start"] is None else r["end"] - r["start"]
            out.setdefault(r["exposure_id"], []).append(r)
    return out


def _dead(db: Database) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in _select(db, sa.select(db.t["dead_letters"])):
        out.setdefault(r["exposure_id"], []).append(r)
    return out


def _exposure_view(r: dict, runs: list[dict], dead: list[dict], alerts: int, candidates: int) -> dict:
    lanes = ["qip", "dip"] if r["too"] else ["dip"]
    by = {(x["lane"], x["stage"]): x for x in runs}
    front_lane = lanes[0]
    stages = {lane: {s: (by.get((front_lane if s in FRONT_STAGES else lane, s)) or {}).get("status")
                     for s in FRONT_STAGES + BACK_STAGES} for lane in lanes}
    quality = r["quality"] or {}
    flags = list(r["flags"] or [])
    return {
        "exposure_id": r["exposure_id"], "field_id": r["field_id"], "mjd": r["mjd"], "night": night_of(r["mjd"]),
        "too": bool(r["too"]), "status": "dead-lettered" if dead and r["status"] not in ("alerted",) else r["status"],
        "lanes": lanes, "stages": stages,
        "quality": {k: _finite(quality.get(k)) for k in QUALITY_KEYS if quality.get(k) is not None},
        "cloud": "cloudy" if "cloudy" in flags else ("clear" if "cloud_prob" in quality else None),
        "flags": flags, "path": r["path"], "file_closed_at": r["file_closed_at"],
        "timings": sorted(({"stage": x["stage"], "lane": x["lane"], "status": x["status"], "seconds": x["seconds"],
                            "reason": x["reason"]} for x in runs), key=lambda t: (t["lane"] != front_lane, _rank(t["stage"]))),
        "dead_letters": [{"id": d["id"], "stage": d["stage"], "reason": d["reason"]} for d in dead],
        "alerts": alerts, "candidates": candidates,
    }


def _rank(stage: str) -> int:
    order = FRONT_STAGES + BACK_STAGES
    return order.index(stage) if stage in order else len(order)


def _counts(db: Database, table: str, exposure_ids: list[str]) -> dict[str, int]:
    tab = db.t[table]
    if not exposure_ids:
        return {}
    stmt = (sa.select(tab.c.exposure_id, sa.func.count()).where(tab.c.exposure_id.in_(exposure_ids))
            .group_by(tab.c.exposure_id))
    with db.engine.connect() as conn:
        return {e: int(n) for e, n in conn.execute(stmt)}


def night(db: Database, name: str | None = None) -> dict:
    """One night's exposures (the latest night by default) with stages, quality, timings,
    alert latencies (file closed → alert published) and dead letters."""
    known = nights(db)
    if name is None:
        name = known[0]["night"] if known else None
    elif not any(n["night"] == name for n in known):
        night_range(name)
        raise NotFound(f"no exposures in night {name}")
    tab = db.t["exposures"]
    stmt = sa.select(tab).order_by(tab.c.mjd, tab.c.exposure_id)
    if name == "unknown":
        stmt = stmt.where(tab.c.mjd.is_(None))
    elif name is not None:
        lo, hi = night_range(name)
        stmt = stmt.where((tab.c.mjd >= lo) & (tab.c.mjd < hi))
    rows = _select(db, stmt)
    ids = [r["exposure_id"] for r in rows]
    runs, dead = _stage_runs(db, ids), _dead(db)
    n_alerts, n_cands = _counts(db, "alerts", ids), _counts(db, "candidates", ids)
    exposures = [_exposure_view(r, runs.get(r["exposure_id"], []), dead.get(r["exposure_id"], []),
                                n_alerts.get(r["exposure_id"], 0), n_cands.get(r["exposure_id"], 0)) for r in rows]
    al = db.t["alerts"]
    latencies = [r["latency_s"] for r in _select(db, sa.select(al.c.latency_s).where(al.c.exposure_id.in_(ids)))
                 if r["latency_s"] is not None] if ids else []
    status: dict[str, int] = {}
    for e in exposures:
        status[e["status"]] = status.get(e["status"], 0) + 1
    return {"night": name, "nights": known, "exposures": exposures, "status_counts": status,
            "alerts": sum(n_alerts.values()), "latency_s": sorted(latencies)}


def exposure(db: Database, exposure_id: str) -> dict:
    """One exposure: its night-page row plus its templates and candidates."""
    rows = db.rows("exposures", exposure_id=exposure_id)
    if not rows:
        raise NotFound(f"no exposure {exposure_id!r}")
    r = {k: _finite(v) for k, v in rows[0].items()}
    ids = [exposure_id]
    view = _exposure_view(r, _stage_runs(db, ids).get(exposure_id, []), _dead(db).get(exposure_id, []),
                          _counts(db, "alerts", ids).get(exposure_id, 0), _counts(db, "candidates", ids).get(exposure_id, 0))
    view["candidate_list"] = candidates(db, CandidateQuery(exposure=exposure_id, per_page=500, sort="score"))["items"]
    view["templates"] = [t for t in (db.template(r["field_id"], lane) for lane in view["lanes"]) if t] if r["field_id"] else []
    return view


# -- candidates --------------------------------------------------------------------------

def _flag(value: str | None, name: str) -> bool | None:
    if value in (None, ""):
        return None
    v = value.lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise BadRequest(f"{name}={value!r}: expected true or false")


def _number(value: str | None, name: str, kind=float):
    if value in (None, ""):
        return None
    try:
        out = kind(value)
    except ValueError:
        raise BadRequest(f"{name}={value!r}: expected a {'whole ' if kind is int else ''}number") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise BadRequest(f"{name}={value!r}: expected a finite number")
    return out


def _default(value, default):
    return default if value is None else value


@dataclass
class CandidateQuery:
    """The candidate table's filters (those of ``alerts listen``, plus lane, exposure, object,
    night, alerts only), sorting and paging."""

    min_score: float | None = None
    max_mag: float | None = None
    has_host: bool | None = None
    in_gw_field: bool | None = None
    not_asteroid: bool | None = None
    alerted: bool | None = None
    lane: str | None = None
    exposure: str | None = None
    object: str | None = None
    night: str | None = None
    sort: str = "mjd"
    order: str = "desc"
    page: int = 1
    per_page: int = 50

    @classmethod
    def from_params(cls, params: Mapping[str, str], per_page: int = 50) -> "CandidateQuery":
        unknown = set(params) - {f.name for f in fields(cls)}
        if unknown:
            raise BadRequest(f"unknown parameter(s) {', '.join(sorted(unknown))}")
        q = cls(min_score=_number(params.get("min_score"), "min_score"),
                max_mag=_number(params.get("max_mag"), "max_mag"),
                has_host=_flag(params.get("has_host"), "has_host"),
                in_gw_field=_flag(params.get("in_gw_field"), "in_gw_field"),
                not_asteroid=_flag(params.get("not_asteroid"), "not_asteroid"),
                alerted=_flag(params.get("alerted"), "alerted"),
                lane=params.get("lane") or None, exposure=params.get("exposure") or None,
                object=params.get("object") or None, night=params.get("night") or None,
                sort=params.get("sort") or "mjd", order=params.get("order") or "desc",
                page=_default(_number(params.get("page"), "page", int), 1),
                per_page=_default(_number(params.get("per_page"), "per_page", int), per_page))
        if q.lane not in (None, "qip", "dip"):
            raise BadRequest(f"lane={q.lane!r}: expected qip or dip")
        if q.sort not in SORTS:
            raise BadRequest(f"sort={q.sort!r}: expected one of {', '.join(SORTS)}")
        if q.order not in ("asc", "desc"):
            raise BadRequest(f"order={q.order!r}: expected asc or desc")
        if q.page < 1 or not 1 <= q.per_page <= 500:
            raise BadRequest("page must be >= 1 and per_page between 1 and 500")
        return q

    def params(self, **change) -> dict:
        """The query as URL parameters (defaults left out), with ``change`` applied."""
        out = {}
        for f in fields(self):
            v = change.get(f.name, getattr(self, f.name))
            if v is not None and v != f.default:
                out[f.name] = str(v).lower() if isinstance(v, bool) else v
        return out


def _too_fields(db: Database) -> dict[str, dict]:
    """Active ToO entry (highest probability) per field."""
    out: dict[str, dict] = {}
    for r in db.too_fields():
        if r["field_id"] not in out or r["prob"] > out[r["field_id"]]["prob"]:
            out[r["field_id"]] = r
    return out


def _candidate_select(db: Database):
    c, e, a = db.t["candidates"], db.t["exposures"], db.t["alerts"]
    return (sa.select(c, e.c.field_id, e.c.too, a.c.alert_id, a.c.latency_s)
            .join(e, e.c.exposure_id == c.c.exposure_id, isouter=True)
            .join(a, a.c.candidate_id == c.c.candidate_id, isouter=True))


def _candidate_view(r: dict, too: dict[str, dict]) -> dict:
    """A candidate row with its cross-matches and the GW event of its field (``too``: :func:`_too_fields`)."""
    extra = r.pop("extra") or {}
    r.update({k: None if extra.get(k) in (None, "") else extra[k] for k in CROSSMATCH_KEYS})
    entry = too.get(r["field_id"])
    r["gw_event"], r["gw_prob"] = (entry["event_id"], entry["prob"]) if entry else (None, None)
    return r


def candidates(db: Database, q: CandidateQuery) -> dict:
    """A page of candidates with their cross-matches, scores, alert ids and stamp links."""
    c, a = db.t["candidates"], db.t["alerts"]
    stmt = _candidate_select(db)
    if q.min_score is not None:
        stmt = stmt.where(c.c.score >= q.min_score)
    if q.max_mag is not None:
        stmt = stmt.where(c.c.mag <= q.max_mag)
    for col, value in ((c.c.lane, q.lane), (c.c.exposure_id, q.exposure), (c.c.object_id, q.object)):
        if value is not None:
            stmt = stmt.where(col == value)
    if q.alerted is not None:
        stmt = stmt.where(a.c.alert_id.is_not(None) if q.alerted else a.c.alert_id.is_(None))
    if q.night is not None:
        lo, hi = night_range(q.night)
        stmt = stmt.where((c.c.mjd >= lo) & (c.c.mjd < hi))
    too = _too_fields(db)
    items = []
    for r in _select(db, stmt):
        r = _candidate_view(r, too)
        if q.has_host is not None and (r["host_id"] is not None) != q.has_host:
            continue
        if q.not_asteroid is not None and (r["ssnamenr"] is None) != q.not_asteroid:
            continue
        if q.in_gw_field is not None and (r["gw_event"] is not None) != q.in_gw_field:
            continue
        items.append(r)
    missing = math.inf if q.order == "asc" else -math.inf
    items.sort(key=lambda r: (missing if r[q.sort] is None else r[q.sort], r["candidate_id"]), reverse=q.order == "desc")
    total = len(items)
    start = (q.page - 1) * q.per_page
    return {"total": total, "page": q.page, "per_page": q.per_page, "pages": max(1, math.ceil(total / q.per_page)),
            "query": q.params(), "items": items[start:start + q.per_page]}


def candidate(db: Database, candidate_id: str) -> dict:
    rows = _select(db, _candidate_select(db).where(db.t["candidates"].c.candidate_id == candidate_id))
    if not rows:
        raise NotFound(f"no candidate {candidate_id!r}")
    return _candidate_view(rows[0], _too_fields(db))


# -- objects -----------------------------------------------------------------------------

def obj(db: Database, object_id: str) -> dict:
    """A transient: position, host, light curve (detections, forced photometry, limits,
    both lanes), every epoch's candidates and its alerts."""
    rows = db.rows("objects", object_id=object_id)
    if not rows:
        raise NotFound(f"no object {object_id!r}")
    o = {k: _finite(v) for k, v in rows[0].items()}
    o["light_curve"] = [{k: _finite(v) for k, v in p.items()} for p in db.light_curve(object_id)]
    o["epochs"] = candidates(db, CandidateQuery(object=object_id, sort="mjd", order="asc", per_page=500))["items"]
    hosts = [(c["host_id"], c["host_sep_arcsec"]) for c in o["epochs"] if c["host_id"] is not None]
    o["host_id"], o["host_sep_arcsec"] = hosts[0] if hosts else (None, None)
    o["alerts"] = [c["alert_id"] for c in o["epochs"] if c["alert_id"] is not None]
    return o


def alert_row(db: Database, alert_id: str) -> dict:
    rows = db.rows("alerts", alert_id=alert_id)
    if not rows:
        raise NotFound(f"no alert {alert_id!r}")
    return rows[0]


# -- ToO, dead letters, templates ------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _skymap(path: str, mtime: float):
    from ast3stream.gw.skymap import read_skymap

    return read_skymap(path)


def skymap(event: dict):
    """The event's stored sky map (None without one); read once per file."""
    path = event.get("skymap_path")
    return _skymap(path, Path(path).stat().st_mtime) if path and Path(path).exists() else None


EVENT_KEYS = ("status", "alert_type", "reason", "far_per_year", "classification", "area50_deg2", "area90_deg2",
              "distmean_mpc", "diststd_mpc", "n_notices", "last_received_at", "expires_at", "skymap_path")


def too(db: Database, grid: dict[str, tuple[float, float]] | None = None, credible_level: float = 0.9) -> dict:
    """GW events: the active ones with their ranked fields (positions from the survey grid
    when given), which fields were observed (coverage), and the candidates of the observed
    fields inside the ``credible_level`` region of the stored sky map (all of them, marked,
    when the event has no sky map); the others (retracted, expired, ignored) listed apart."""
    from agents.gw import GWState
    from ast3stream.gw.skymap import credible_level_at

    meta = {e["event_id"]: e for e in GWState(db).events()}
    e = db.t["exposures"]
    observed: dict[str, list[str]] = {}
    for r in _select(db, sa.select(e.c.field_id, e.c.exposure_id).where(e.c.field_id.is_not(None))):
        observed.setdefault(r["field_id"], []).append(r["exposure_id"])
    events: dict[str, dict] = {}
    for r in db.too_fields():
        ev = events.setdefault(r["event_id"], {"event_id": r["event_id"], "fields": [], "coverage": 0.0,
                                               "cum_prob": 0.0, "candidates": [],
                                               **{k: meta.get(r["event_id"], {}).get(k) for k in EVENT_KEYS}})
        pos = (grid or {}).get(r["field_id"])
        f = {"rank": r["rank"], "field_id": r["field_id"], "prob": r["prob"], "cum_prob": r["cum_prob"],
             "galaxy_score": _finite(r["galaxy_score"]), "ra": pos[0] if pos else None, "dec": pos[1] if pos else None,
             "exposures": observed.get(r["field_id"], [])}
        ev["fields"].append(f)
        ev["cum_prob"] = max(ev["cum_prob"], r["cum_prob"] or 0.0)
        if f["exposures"]:
            ev["coverage"] += r["prob"] or 0.0
    for ev in events.values():
        ev["credible_level"] = credible_level
        ev["has_skymap"] = (sky := skymap(ev)) is not None
        observed_fields = {f["field_id"] for f in ev["fields"] if f["exposures"]}
        if not observed_fields:
            continue
        items = [c for c in candidates(db, CandidateQuery(in_gw_field=True, sort="score", per_page=500))["items"]
                 if c["field_id"] in observed_fields]
        if sky is not None and items:
            levels = credible_level_at(sky, [c["ra"] for c in items], [c["dec"] for c in items])
            for c, level in zip(items, levels):
                c["credible_level"] = float(level)
            items = [c for c in items if c["credible_level"] <= credible_level]
        ev["candidates"] = items
    others = [{"event_id": k, **{key: m.get(key) for key in EVENT_KEYS}} for k, m in meta.items() if k not in events]
    return {"events": list(events.values()), "others": others}


def dead_letters(db: Database) -> list[dict]:
    """Every dead letter, newest first; ``exposure_known``: its exposure is in the database
    (a file the watcher could not take never became one)."""
    tab, e = db.t["dead_letters"], db.t["exposures"]
    known = sa.select(e.c.exposure_id).where(e.c.exposure_id == tab.c.exposure_id).exists()
    return _select(db, sa.select(tab, known.label("exposure_known")).order_by(tab.c.failed_at.desc(), tab.c.id.desc()))


def dead_letter(db: Database, dl_id: int) -> dict:
    rows = db.rows("dead_letters", id=dl_id)
    if not rows:
        raise NotFound(f"no dead letter {dl_id}")
    return rows[0]


def templates(db: Database) -> list[dict]:
    """Every field's templates with their quality, and the field's exposures (candidates to replace them)."""
    tab, e = db.t["templates"], db.t["exposures"]
    fields_: dict[str, dict] = {}
    for t in _select(db, sa.select(tab).order_by(tab.c.field_id, tab.c.lane)):
        fields_.setdefault(t["field_id"], {"field_id": t["field_id"], "lanes": {}, "exposures": []})["lanes"][t["lane"]] = t
    for r in _select(db, sa.select(e.c.field_id, e.c.exposure_id, e.c.mjd, e.c.status).order_by(e.c.mjd)):
        if r["field_id"] in fields_:
            fields_[r["field_id"]]["exposures"].append(r)
    return list(fields_.values())
