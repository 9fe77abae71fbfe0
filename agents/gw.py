"""GW notices into the database: the notice policy, updates, retractions and expiry of the ToO list.

Tables (no namespace prefix: like ``too_fields`` they are inputs shared by live runs and replays):

``gw_events``   one row per superevent: ``status`` (``active``, ``retracted``, ``expired``,
                ``ignored``), the latest notice's type, FAR, classification, areas, distance, the
                stored sky map (``skymap_path``), ``expires_at``, and its ToO list's size and probability.
``gw_notices``  every notice received (key: sha256 of its bytes, so a redelivery is one row): its
                type, first origin (topic or file) and time, whether it was followed and why
                (``reason``), and what it did the last time it came (``action``: ``fields``,
                ``retracted``, ``ignored``, ``superseded``, ``no skymap``).
``too_fields``  (in :mod:`agents.db`) the ToO list that routes exposures to the priority lane.
                A followed PRELIMINARY / INITIAL / UPDATE *replaces* the event's list in one
                transaction (fields no longer in it stop being ToO); a RETRACTION or expiry
                (``gw.expire_hours`` after the event's last notice) removes it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
import sqlalchemy as sa
from astropy.table import Table
from astropy.time import Time

from agents.db import Database, _plain, _retried
from ast3stream.gw.notices import GWNotice, read_notice
from ast3stream.gw.policy import YEAR_S, Decision, is_mock, judge
from ast3stream.gw.skymap import DISTANCE_COLUMNS, credible_area, write_skymap
from ast3stream.gw.too import default_grid, field_size, too_fields

log = logging.getLogger("ast3stream.gw")


def _tables(md: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    C = sa.Column
    events = sa.Table(
        "gw_events", md,
        C("event_id", sa.String(64), primary_key=True),
        C("status", sa.String(16)), C("reason", sa.Text), C("alert_type", sa.String(16)),
        C("n_notices", sa.Integer), C("first_received_at", sa.Float), C("last_received_at", sa.Float),
        C("time_created", sa.String(32)), C("expires_at", sa.Float), C("event_time", sa.String(32)),
        C("far_per_year", sa.Float), C("significant", sa.Boolean), C("mock", sa.Boolean),
        C("search_group", sa.String(16)), C("pipeline", sa.String(32)), C("search", sa.String(32)),
        C("instruments", sa.JSON), C("classification", sa.JSON), C("properties", sa.JSON),
        C("area50_deg2", sa.Float), C("area90_deg2", sa.Float),
        C("distmean_mpc", sa.Float), C("diststd_mpc", sa.Float),
        C("skymap_path", sa.Text), C("n_fields", sa.Integer), C("cum_prob", sa.Float))
    notices = sa.Table(
        "gw_notices", md,
        C("notice_id", sa.String(64), primary_key=True),
        C("event_id", sa.String(64), index=True), C("alert_type", sa.String(16)),
        C("time_created", sa.String(32)), C("received_at", sa.Float), C("origin", sa.Text),
        C("followed", sa.Boolean), C("reason", sa.Text), C("action", sa.String(16)),
        C("far_per_year", sa.Float), C("significant", sa.Boolean),
        C("n_fields", sa.Integer), C("cum_prob", sa.Float), C("skymap_path", sa.Text))
    return events, notices


_MD = sa.MetaData()
EVENTS, NOTICES = _tables(_MD)
_created: set[int] = set()      # engines whose GW tables exist


class GWState:
    """The GW tables on a pipeline :class:`~agents.db.Database` (same engine, same retries)."""

    def __init__(self, db: Database):
        self.db, self.retry_s = db, db.retry_s
        self.events_t, self.notices_t, self.too_t = EVENTS, NOTICES, db.t["too_fields"]
        if id(db.engine) not in _created:
            self._create()
            _created.add(id(db.engine))

    @_retried
    def _create(self) -> None:
        with self.db.engine.begin() as conn:
            _MD.create_all(conn)

    @_retried
    def event(self, event_id: str) -> dict | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(self.events_t).where(self.events_t.c.event_id == event_id)).first()
        return dict(row._mapping) if row else None

    @_retried
    def events(self, status: str | None = None) -> list[dict]:
        stmt = sa.select(self.events_t).order_by(self.events_t.c.last_received_at.desc())
        if status:
            stmt = stmt.where(self.events_t.c.status == status)
        with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    @_retried
    def notices(self, event_id: str | None = None) -> list[dict]:
        stmt = sa.select(self.notices_t).order_by(self.notices_t.c.received_at)
        if event_id:
            stmt = stmt.where(self.notices_t.c.event_id == event_id)
        with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    @_retried
    def apply(self, event: dict, notice: dict, fields: Table | None = None, remove: bool = False) -> None:
        """In one transaction: the event row, the notice row, and the event's ToO list replaced
        by ``fields`` (or removed with ``remove``)."""
        now = notice["received_at"]
        with self.db.engine.begin() as conn:
            if fields is not None or remove:
                conn.execute(self.too_t.delete().where(self.too_t.c.event_id == event["event_id"]))
            if fields is not None and len(fields):
                conn.execute(self.too_t.insert(), [
                    dict(event_id=event["event_id"], field_id=str(r["field_id"]), prob=float(r["prob"]),
                         cum_prob=float(r["cum_prob"]), rank=i, retracted=False, created_at=now,
                         galaxy_score=_plain(float(r["galaxy_score"])) if "galaxy_score" in r.colnames else None)
                    for i, r in enumerate(fields, start=1)])
            new = conn.execute(sa.select(self.notices_t.c.notice_id)
                               .where(self.notices_t.c.notice_id == notice["notice_id"])).first() is None
            if new:
                conn.execute(self.notices_t.insert().values(**notice))
            else:        # the same notice again (redelivered, or given by hand): its latest outcome
                conn.execute(self.notices_t.update().where(self.notices_t.c.notice_id == notice["notice_id"]).values(
                    **{k: v for k, v in notice.items() if k not in ("notice_id", "received_at", "origin")}))
            known = conn.execute(sa.select(self.events_t.c.n_notices)
                                 .where(self.events_t.c.event_id == event["event_id"])).first()
            if known is None:
                conn.execute(self.events_t.insert().values(**event, n_notices=1, first_received_at=now))
            else:
                conn.execute(self.events_t.update().where(self.events_t.c.event_id == event["event_id"])
                             .values(**event, n_notices=(known[0] or 0) + int(new)))

    @_retried
    def expire(self, now: float | None = None) -> list[str]:
        """Remove the ToO lists of active events past ``expires_at``; their ids."""
        now = time.time() if now is None else now
        ev = self.events_t
        with self.db.engine.begin() as conn:
            ids = [r[0] for r in conn.execute(sa.select(ev.c.event_id).where(
                (ev.c.status == "active") & (ev.c.expires_at < now)))]
            if ids:
                conn.execute(self.too_t.delete().where(self.too_t.c.event_id.in_(ids)))
                conn.execute(ev.update().where(ev.c.event_id.in_(ids)).values(status="expired", n_fields=0))
        for i in ids:
            log.warning("GW %s: ToO list expired", i)
        return ids


@dataclass
class Outcome:
    notice: GWNotice
    decision: Decision
    action: str                    #: fields, retracted, ignored, superseded, no skymap
    fields: Table | None = None    #: the event's new ToO list (action ``fields``)


def survey_grid(cfg) -> Table:
    """The survey's field grid: ``paths.fields``, written from the camera's default grid on first use."""
    path = cfg.fields_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        grid = default_grid(cfg.detector, cfg.gw)
        grid.write(path, format="ascii.csv")
        log.warning("wrote the default survey grid (%d fields of %.2f x %.2f deg) to %s", len(grid),
                    *field_size(cfg.detector, cfg.gw), path)
    return Table.read(path, format="ascii.csv", converters={"field_id": str})


def ingest(source: bytes | str | Path, db: Database, cfg, *, origin: str = "file", enforce_policy: bool = True,
           fields: Table | None = None, galaxies: Table | None = None, skymap_dir=None,
           now: float | None = None) -> Outcome:
    """Read a notice (bytes or path) and apply it to the database under the notice policy.

    ``enforce_policy=False`` (a notice given by hand) follows it whatever the policy says; the
    policy's verdict is still stored as the reason. ``fields`` default to :func:`survey_grid`,
    ``galaxies`` to ``paths.galaxies`` when it exists. A notice older than the one the event's
    list comes from (``time_created``) is recorded as ``superseded`` and changes nothing.
    """
    path = Path(source) if isinstance(source, Path) or (
        isinstance(source, str) and not source.lstrip().startswith(("{", "<"))) else None
    data = path.read_bytes() if path else source.encode() if isinstance(source, str) else bytes(source)
    notice = read_notice(data, skymap_dir or cfg.gw.skymap_dir or (path.parent if path else None))
    now = time.time() if now is None else now
    state = GWState(db)
    state.expire(now)
    policy = judge(notice, cfg.gw)
    decision = policy if enforce_policy or policy.follow else Decision(True, f"given by hand ({policy.reason})")
    sid = notice.superevent_id
    known = state.event(sid)
    created = notice.time_created.utc.isot if notice.time_created is not None else None
    far_yr = None if notice.far is None else notice.far * YEAR_S
    row = dict(notice_id=hashlib.sha256(data).hexdigest(), event_id=sid, alert_type=notice.alert_type,
               time_created=created, received_at=now, origin=origin, followed=decision.follow,
               reason=decision.reason, far_per_year=far_yr, significant=notice.significant)
    event = dict(event_id=sid, alert_type=notice.alert_type, reason=decision.reason, last_received_at=now,
                 mock=is_mock(notice))
    if notice.significant is not None or far_yr is not None:
        event.update(far_per_year=far_yr, significant=notice.significant)

    if not decision.follow:
        log.warning("GW %s %s ignored: %s", sid, notice.alert_type, decision.reason)
        if known is None or known["status"] == "ignored":
            event["status"] = "ignored"
        else:
            event = dict(event_id=sid, last_received_at=now)   # a followed event stays as it is
        state.apply(event, {**row, "action": "ignored"})
        return Outcome(notice, decision, "ignored")
    if known and known["time_created"] and created and created < known["time_created"]:
        log.warning("GW %s %s of %s is older than the applied notice of %s: superseded", sid, notice.alert_type,
                    created, known["time_created"])
        state.apply(dict(event_id=sid, last_received_at=now), {**row, "action": "superseded"})
        return Outcome(notice, decision, "superseded")
    event["time_created"] = created
    if notice.is_retraction:
        log.warning("GW %s RETRACTION: its ToO fields are removed", sid)
        state.apply({**event, "status": "retracted", "n_fields": 0, "cum_prob": 0.0},
                    {**row, "action": "retracted"}, remove=True)
        return Outcome(notice, decision, "retracted")
    event.update(status="active", expires_at=now + cfg.gw.expire_hours * 3600,
                 event_time=notice.event_time.utc.isot if notice.event_time is not None else None,
                 search_group=notice.group, pipeline=notice.pipeline, search=notice.search,
                 instruments=notice.instruments, classification=notice.classification, properties=notice.properties)
    if notice.skymap is None:
        log.warning("GW %s %s: no sky map (%s not found locally); the ToO list is kept", sid, notice.alert_type,
                    notice.skymap_url)
        state.apply(event, {**row, "action": "no skymap"})
        return Outcome(notice, decision, "no skymap")
    fields = survey_grid(cfg) if fields is None else fields
    if galaxies is None and cfg.galaxies_path.exists():
        galaxies = Table.read(cfg.galaxies_path, format="ascii.csv")
    width, height = field_size(cfg.detector, cfg.gw)
    table = too_fields(notice, fields, cfg.gw, width, height, galaxies=galaxies)
    sky = notice.skymap
    path = write_skymap(sky, cfg.products_dir / "gw" / sid / f"{notice.alert_type.lower()}-{row['notice_id'][:12]}"
                                                             f".multiorder.fits")
    cum = float(table["cum_prob"][-1]) if len(table) else 0.0
    event.update(area50_deg2=credible_area(sky, 0.5), area90_deg2=credible_area(sky, 0.9), skymap_path=str(path),
                 n_fields=len(table), cum_prob=cum,
                 distmean_mpc=_plain(sky.meta.get("DISTMEAN")) if all(c in sky.colnames for c in DISTANCE_COLUMNS)
                 else None,
                 diststd_mpc=_plain(sky.meta.get("DISTSTD")) if all(c in sky.colnames for c in DISTANCE_COLUMNS)
                 else None)
    state.apply(event, {**row, "action": "fields", "n_fields": len(table), "cum_prob": cum, "skymap_path": str(path)},
                fields=table)
    log.warning("GW %s %s: %d ToO fields, cumulative probability %.3f", sid, notice.alert_type, len(table), cum)
    return Outcome(notice, decision, "fields", table)


def too_entry(db: Database, field_id: str | None) -> dict | None:
    """The field's active ToO entry (highest probability) with its event's ``alert_type`` and
    ``skymap_path``: what the alert stage puts in GCN-style notices."""
    row = db.too_event_for_field(field_id)
    if row is None:
        return None
    ev = GWState(db).event(row["event_id"]) or {}
    return {**row, "alert_type": ev.get("alert_type"), "skymap_path": ev.get("skymap_path")}


def event_skymap(event: dict):
    """The stored sky map of an event row (None when it has none)."""
    from ast3stream.gw.skymap import read_skymap

    path = event.get("skymap_path")
    return read_skymap(path) if path and Path(path).exists() else None


def event_fields(db: Database, cfg, event_id: str) -> Table:
    """The event's active ToO fields with their grid positions (``field_id``, ``ra``, ``dec``, ``prob``, ``rank``...)."""
    rows = [r for r in db.too_fields() if r["event_id"] == event_id]
    grid = survey_grid(cfg)
    pos = {str(f): (float(ra), float(dec)) for f, ra, dec in zip(grid["field_id"], grid["ra"], grid["dec"])}
    rows = [r for r in rows if str(r["field_id"]) in pos]
    names = ["field_id", "ra", "dec", "prob", "cum_prob", "rank", "galaxy_score"]
    return Table(rows=[(str(r["field_id"]), *pos[str(r["field_id"])], r["prob"], r["cum_prob"], r["rank"],
                        np.nan if r["galaxy_score"] is None else r["galaxy_score"]) for r in rows],
                 names=names, dtype=[str, float, float, float, float, int, float])


PROCESSED = ("calibrated", "template", "no_template", "alerted")   #: exposure states past photometry


def observed(db: Database, cfg, since_mjd: float | None = None, processed: bool = False) -> Table:
    """Exposures of grid fields taken after ``since_mjd`` (``exposure_id``, ``field_id``, ``ra``,
    ``dec``, ``mjd``, ``maglim``; NaN where the photometry gave none), failed ones left out; with
    ``processed`` only those past photometry (:data:`PROCESSED`)."""
    grid = survey_grid(cfg)
    pos = {str(f): (float(ra), float(dec)) for f, ra, dec in zip(grid["field_id"], grid["ra"], grid["dec"])}
    rows = []
    for e in db.rows("exposures"):
        fid = str(e["field_id"])
        if fid not in pos or e["mjd"] is None or (since_mjd is not None and e["mjd"] < since_mjd) or (
                e["status"] not in PROCESSED if processed else e["status"] == "failed"):
            continue
        maglim = (e.get("quality") or {}).get("maglim")
        rows.append((e["exposure_id"], fid, *pos[fid], float(e["mjd"]), np.nan if maglim is None else float(maglim)))
    return Table(rows=rows, names=["exposure_id", "field_id", "ra", "dec", "mjd", "maglim"],
                 dtype=[str, str, float, float, float, float])


def candidates_of(db: Database, exposure_ids) -> Table:
    """Positive candidates of those exposures, one per object (its latest), with ``rb``, ``ssnamenr``,
    ``var_name``, ``tns_name``, ``host_id``, ``host_dist_mpc`` and the light curve's ``rate_mag_per_day``."""
    from ast3stream.gw.kilonova import light_curve_rate

    ids, latest = set(exposure_ids), {}
    for c in db.rows("candidates"):
        if c["exposure_id"] in ids and (c["sign"] or 0) > 0 and c["object_id"]:
            if c["object_id"] not in latest or c["mjd"] > latest[c["object_id"]]["mjd"]:
                latest[c["object_id"]] = c
    rows = []
    for oid, c in latest.items():
        x = c.get("extra") or {}
        rate = light_curve_rate([p for p in db.light_curve(oid) if p.get("detected")])
        rows.append((oid, c["candidate_id"], float(c["ra"]), float(c["dec"]), float(c["mjd"]),
                     np.nan if c["mag"] is None else float(c["mag"]), np.nan if c["score"] is None else float(c["score"]),
                     str(x.get("ssnamenr") or ""), str(x.get("var_name") or ""), str(x.get("tns_name") or ""),
                     str(x.get("host_id") or ""),
                     np.nan if x.get("host_dist_mpc") is None else float(x["host_dist_mpc"]),
                     np.nan if rate is None else rate))
    return Table(rows=rows, names=["object_id", "candidate_id", "ra", "dec", "mjd", "mag", "rb", "ssnamenr", "var_name",
                                   "tns_name", "host_id", "host_dist_mpc", "rate_mag_per_day"],
                 dtype=[str, str, float, float, float, float, float, str, str, str, str, float, float])


def night_of(where, now: Time | None = None) -> str:
    """The local evening date (YYYY-MM-DD) of the night in progress or coming at the site."""
    return ((now or Time.now()) + (where.lon / 15 - 12) * u.hour).isot[:10]


def write_plan(db: Database, cfg, event: dict, where=None, night: str | None = None, out: Path | None = None):
    """The event's observable schedule for ``night`` at ``where`` (default ``gw.plan.site``, the
    coming night), counting the visits made since the event, with the cumulative probability of
    the union of the fields in time order; written as ``plan-<event>-<night>.{json,csv,png}``
    under ``out`` (default ``<products>/gw/<event>``). Returns (schedule, path stem)."""
    from ast3stream.gw.fields import covered_probability
    from ast3stream.gw.observe import night_window, schedule, site
    from ast3stream.gw.plot import plot_schedule

    plan = cfg.gw.plan
    where = where or site(plan.site, cfg.detector)
    night = night or night_of(where)
    start, end = night_window(where, night, plan.sun_alt_deg)
    fields = event_fields(db, cfg, event["event_id"])
    seen = observed(db, cfg, since_mjd=Time(event["event_time"]).mjd if event.get("event_time") else None)
    done: dict = {}
    for f, m in zip(seen["field_id"], seen["mjd"]):
        n, last = done.get(f, (0, None))
        t = Time(m, format="mjd")
        done[f] = (n + 1, t if last is None or t > last else last)
    by = cfg.gw.rank_by if np.isfinite(np.asarray(fields["galaxy_score"], float)).any() else "prob"
    sched = schedule(fields, where, start, end, plan, done=done, priority=by)
    skymap = event_skymap(event)
    width, height = field_size(cfg.detector, cfg.gw)
    sched["cum_prob"] = (covered_probability(skymap, sched, width, height) if skymap is not None
                         else np.cumsum(np.where(sched["visit"] == 1, sched["prob"], 0.0)))
    sched.meta["n_candidates"] = len(fields)
    out = Path(out) if out else cfg.products_dir / "gw" / event["event_id"]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"plan-{event['event_id']}-{night}"
    sched.write(f"{stem}.csv", format="ascii.csv", overwrite=True)
    tmp = Path(f"{stem}.json.part")          # the scheduler may be reading the last one: replace it whole
    tmp.write_text(json.dumps(dict(
        event_id=event["event_id"], alert_type=event["alert_type"], night=night, **sched.meta,
        exptime_s=plan.exptime_s, revisits=plan.revisits, cum_prob=float(sched["cum_prob"][-1]) if len(sched) else 0.0,
        visits=[{k: _plain(r[k]) for k in sched.colnames} for r in sched]), indent=1))
    tmp.replace(f"{stem}.json")
    plot_schedule(sched, f"{stem}.png", skymap, title=f"{event['event_id']} ({event['alert_type']}) from "
                                                        f"{where.name}, night of {night}")
    return sched, stem


def write_coverage(db: Database, cfg, event: dict, out: Path | None = None) -> tuple[dict, Path] | None:
    """The event's coverage report (:func:`ast3stream.gw.coverage.coverage_report`) from the
    exposures processed since the event and their candidates, written as ``coverage-<event>.json``
    and ``.png`` under ``out`` (default ``<products>/gw/<event>``); None when the event has no map."""
    from ast3stream.gw.coverage import coverage_report
    from ast3stream.gw.plot import plot_coverage

    skymap = event_skymap(event)
    if skymap is None:
        return None
    seen = observed(db, cfg, since_mjd=Time(event["event_time"]).mjd if event.get("event_time") else None,
                    processed=True)
    report = coverage_report(skymap, seen, *field_size(cfg.detector, cfg.gw), cfg.gw,
                             candidates_of(db, seen["exposure_id"]), event_id=event["event_id"])
    out = Path(out) if out else cfg.products_dir / "gw" / event["event_id"]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"coverage-{event['event_id']}.json"
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
    plot_coverage(report, path.with_suffix(".png"), skymap, seen)
    return report, path


def on_notice(value: bytes, db: Database, cfg, origin: str) -> Outcome:
    """The stream's handling of one notice: :func:`ingest` under the policy, then (``gw.plan.auto``)
    the coming night's plan for the event when its list changed; a plan that cannot be made
    (no night at the site) is logged, the notice stands."""
    out = ingest(value, db, cfg, origin=origin)
    if out.action == "fields" and cfg.gw.plan.auto:
        try:
            sched, stem = write_plan(db, cfg, GWState(db).event(out.notice.superevent_id))
            log.warning("GW %s: plan for tonight, %d visits, cumulative probability %.3f: %s.json",
                        out.notice.superevent_id, len(sched), sched["cum_prob"][-1] if len(sched) else 0.0, stem)
        except ValueError as exc:
            log.warning("GW %s: no plan: %s", out.notice.superevent_id, exc)
    return out
