"""State of the survey in a real database: SQLite by default, PostgreSQL by URL.

Tables (names carry the namespace prefix, so a replay writes beside the live tables; the
ToO field list is an input made from GW notices and is shared by every namespace):
``exposures`` (one row per raw file: status and timings per stage, quality),
``stage_runs`` (one row per stage x lane x exposure), ``templates``, ``too_fields``,
``candidates``, ``objects`` (transients: candidates within 1.5 arcsec), ``photometry``
(light curves incl. forced photometry and upper limits), ``alerts`` (published),
``sends`` (one claim per exposure and lane on sending its candidates and alerts: see
:mod:`agents.outbox`), ``dead_letters`` and
``files`` (raw files the watcher did not publish: rejected ones by content hash, so a
restart does not dead-letter them again, and copies of known exposures).
Every write is an idempotent upsert keyed by a deterministic id, so redelivered
messages change nothing, and a write cut off by a dropped connection can simply be run
again: every method retries transient errors (connection lost, server restarting, SQLite
busy) with backoff for ``retry_s`` seconds, then raises :class:`DatabaseUnavailable`.
"""
from __future__ import annotations

import functools
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger(__name__)

#: statuses before the template decision (subtraction): ``template``, ``no_template``, ``alerted``, ``failed`` come after
UNDECIDED = ("registered", "ingested", "reduced", "calibrated")

_SCHEMA_LOCK = 0x41535433  # PostgreSQL advisory lock held while creating tables ("AST3")


class DatabaseUnavailable(RuntimeError):
    """The database stayed unreachable for ``retry_s`` seconds. Every write is idempotent, so
    the caller may hold its work and run it again later."""


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """A dropped or refused connection, a server shutting down or starting, a lock conflict."""
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    if isinstance(exc.orig, sqlite3.Error):
        return "is locked" in str(exc.orig)
    state = getattr(exc.orig, "sqlstate", None)  # psycopg: None when no server answered
    return state is None or state.startswith(("08", "57P01", "57P02", "57P03", "40001", "40P01"))


def _retried(method):
    """Run a database method again on transient errors, with backoff, for ``self.retry_s`` seconds."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        deadline, delay = time.monotonic() + self.retry_s, 0.1
        while True:
            try:
                return method(self, *args, **kwargs)
            except sa.exc.DBAPIError as exc:
                if not _transient(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailable(f"{method.__name__}: database unreachable for "
                                              f"{self.retry_s:g} s: {exc.orig}") from exc
                log.warning("%s: %s; retrying in %.1f s", method.__name__, " ".join(str(exc.orig).split()), delay)
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
    return wrapper


def _tables(md: sa.MetaData, ns: str) -> dict[str, sa.Table]:
    p = f"{ns}_" if ns else ""
    T, C = sa.Table, sa.Column
    return {
        "exposures": T(f"{p}exposures", md,
                       C("exposure_id", sa.String(128), primary_key=True),
                       C("sha256", sa.String(64), unique=True, nullable=False),
                       C("path", sa.Text, nullable=False),
                       C("field_id", sa.String(64), index=True),
                       C("mjd", sa.Float), C("too", sa.Boolean, default=False),
                       C("file_closed_at", sa.Float), C("detected_at", sa.Float),
                       C("status", sa.String(32), default="new"),
                       C("quality", sa.JSON, default=dict),
                       C("flags", sa.JSON, default=list)),
        "stage_runs": T(f"{p}stage_runs", md,
                        C("exposure_id", sa.String(128), primary_key=True),
                        C("lane", sa.String(8), primary_key=True),
                        C("stage", sa.String(32), primary_key=True),
                        C("version", sa.String(32)),
                        C("start", sa.Float), C("end", sa.Float),
                        C("status", sa.String(16)), C("reason", sa.Text)),
        "templates": T(f"{p}templates", md,
                       C("field_id", sa.String(64), primary_key=True),
                       C("lane", sa.String(8), primary_key=True),
                       C("exposure_id", sa.String(128), nullable=False),
                       C("path", sa.Text, nullable=False),
                       C("maglim", sa.Float), C("pcc", sa.Float), C("fwhm_px", sa.Float),
                       C("zp", sa.Float), C("created_at", sa.Float)),
        "too_fields": T("too_fields", md,  # an input (from GW notices): shared by live and replays
                        C("event_id", sa.String(64), primary_key=True),
                        C("field_id", sa.String(64), primary_key=True),
                        C("prob", sa.Float), C("cum_prob", sa.Float), C("rank", sa.Integer),
                        C("galaxy_score", sa.Float), C("retracted", sa.Boolean, default=False),
                        C("created_at", sa.Float)),
        "candidates": T(f"{p}candidates", md,
                        C("candidate_id", sa.String(64), primary_key=True),
                        C("exposure_id", sa.String(128), index=True),
                        C("lane", sa.String(8)), C("object_id", sa.String(64), index=True),
                        C("mjd", sa.Float), C("ra", sa.Float), C("dec", sa.Float),
                        C("x", sa.Float), C("y", sa.Float),
                        C("mag", sa.Float), C("mag_err", sa.Float), C("snr", sa.Float),
                        C("sign", sa.Integer), C("score", sa.Float), C("model_version", sa.String(64)),
                        C("maglim", sa.Float), C("extra", sa.JSON, default=dict)),
        "objects": T(f"{p}objects", md,
                     C("object_id", sa.String(64), primary_key=True),
                     C("ra", sa.Float), C("dec", sa.Float), C("field_id", sa.String(64), index=True),
                     C("n_det", sa.Integer), C("first_mjd", sa.Float), C("last_mjd", sa.Float)),
        "photometry": T(f"{p}photometry", md,
                        C("object_id", sa.String(64), primary_key=True),
                        C("exposure_id", sa.String(128), primary_key=True),
                        C("lane", sa.String(8), primary_key=True),
                        C("mjd", sa.Float), C("mag", sa.Float), C("mag_err", sa.Float),
                        C("flux", sa.Float), C("flux_err", sa.Float), C("maglim", sa.Float),
                        C("forced", sa.Boolean), C("detected", sa.Boolean)),
        "alerts": T(f"{p}alerts", md,
                    C("alert_id", sa.String(64), primary_key=True),
                    C("candidate_id", sa.String(64)), C("object_id", sa.String(64), index=True),
                    C("exposure_id", sa.String(128), index=True), C("lane", sa.String(8)),
                    C("score", sa.Float),
                    C("digest", sa.String(64)),  # sha256 of the packet less its history (see pipeline.alert)
                    C("published_at", sa.Float), C("latency_s", sa.Float)),
        "sends": T(f"{p}sends", md,  # who sends a lane's candidates and alerts; done_at once all are out
                   C("exposure_id", sa.String(128), primary_key=True), C("lane", sa.String(8), primary_key=True),
                   C("owner", sa.String(128), nullable=False), C("renewed_at", sa.Float), C("done_at", sa.Float)),
        "files": T(f"{p}files", md,  # raw files the watcher did not publish: bad ones, copies
                   C("sha256", sa.String(64), primary_key=True),
                   C("path", sa.Text, primary_key=True),
                   C("kind", sa.String(16), nullable=False),  # "rejected" or "duplicate"
                   C("reason", sa.Text), C("seen_at", sa.Float)),
        "dead_letters": T(f"{p}dead_letters", md,
                          C("id", sa.Integer, primary_key=True, autoincrement=True),
                          C("source_topic", sa.String(255)), C("stage", sa.String(32)),
                          C("exposure_id", sa.String(128)), C("reason", sa.Text),
                          C("failed_at", sa.Float)),
    }


class Database:
    """Connection to the pipeline database; ``namespace`` prefixes every table name.

    ``retry_s``: how long each call rides out transient errors before :class:`DatabaseUnavailable`.
    """

    def __init__(self, url: str, namespace: str = "", retry_s: float = 30.0, connect_args: dict | None = None):
        self.url = url
        self.namespace = namespace
        self.retry_s = retry_s
        kwargs: dict = {"future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        elif connect_args:
            kwargs["connect_args"] = connect_args       # PostgreSQL TLS (agents.security.database_connect_args)
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _):
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        self.metadata = sa.MetaData()
        self.t = _tables(self.metadata, namespace)
        self._create_tables()

    @_retried
    def _create_tables(self) -> None:
        """Create missing tables; workers starting together take turns (one creates, the rest see them)."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # SQLite's write lock
            self.metadata.create_all(conn)

    @classmethod
    def from_settings(cls, cfg, namespace: str | None = None, retry_s: float = 30.0) -> "Database":
        if not cfg.database.url:
            cfg.paths.data_dir.mkdir(parents=True, exist_ok=True)
        from .security import database_connect_args

        return cls(cfg.database_url, cfg.database.namespace if namespace is None else namespace, retry_s,
                   database_connect_args(cfg.security))

    # -- generic ------------------------------------------------------------------------
    @_retried
    def _upsert(self, table: str, row: Mapping, update: bool = True) -> None:
        tab = self.t[table]
        row = {k: _plain(v) for k, v in row.items()}
        dialect = self.engine.dialect.name
        ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(tab).values(**row)
        keys = [c.name for c in tab.primary_key.columns]
        if update:
            stmt = ins.on_conflict_do_update(index_elements=keys,
                                             set_={k: ins.excluded[k] for k in row if k not in keys})
        else:
            stmt = ins.on_conflict_do_nothing(index_elements=keys)
        with self.engine.begin() as conn:
            conn.execute(stmt)

    @_retried
    def rows(self, table: str, **where) -> list[dict]:
        tab = self.t[table]
        stmt = sa.select(tab)
        for k, v in where.items():
            stmt = stmt.where(tab.c[k] == v)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    @_retried
    def count(self, table: str, **where) -> int:
        tab = self.t[table]
        stmt = sa.select(sa.func.count()).select_from(tab)
        for k, v in where.items():
            stmt = stmt.where(tab.c[k] == v)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    @_retried
    def clear(self) -> None:
        """Delete every row of this namespace's tables (a replay's; never the live tables, nor
        the shared ToO field list)."""
        if not self.namespace:
            raise ValueError("the live tables are never cleared")
        with self.engine.begin() as conn:
            for name, tab in self.t.items():
                if name != "too_fields":
                    conn.execute(tab.delete())

    # -- exposures ----------------------------------------------------------------------
    @_retried
    def register_exposure(self, ev) -> bool:
        """Record a raw exposure before it is published (status ``registered``).

        Returns False when the same content (sha256) or id is already known and published; an
        exposure registered but never published (a crash in between) is offered again.
        """
        tab = self.t["exposures"]
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(tab.c.status).where(
                (tab.c.sha256 == ev.sha256) | (tab.c.exposure_id == ev.exposure_id))).first()
            if row:
                return row[0] == "registered"
            conn.execute(tab.insert().values(
                exposure_id=ev.exposure_id, sha256=ev.sha256, path=ev.path, field_id=ev.field_id,
                mjd=ev.mjd, too=ev.too, file_closed_at=ev.file_closed_at, detected_at=ev.detected_at,
                status="registered", quality={}, flags=[]))
        return True

    @_retried
    def mark_published(self, exposure_id: str) -> None:
        """``registered`` → ``ingested`` once the exposure event is on the broker (later stages win)."""
        tab = self.t["exposures"]
        with self.engine.begin() as conn:
            conn.execute(tab.update().where((tab.c.exposure_id == exposure_id) & (tab.c.status == "registered"))
                         .values(status="ingested"))

    @_retried
    def update_exposure(self, exposure_id: str, *, status: str | None = None,
                        quality: Mapping | None = None, flags: Iterable[str] | None = None) -> None:
        tab = self.t["exposures"]
        values: dict = {}
        if status is not None:
            values["status"] = status
        if quality is not None:
            values["quality"] = {k: _plain(v) for k, v in quality.items()}
        if flags is not None:
            values["flags"] = sorted(set(flags))
        if values:
            where = tab.c.exposure_id == exposure_id
            if status in UNDECIDED:  # a chain run again (redelivered) never takes a decided exposure back
                values.pop("status")
                with self.engine.begin() as conn:
                    conn.execute(tab.update().where(where & tab.c.status.in_(UNDECIDED)).values(status=status))
            if values:
                with self.engine.begin() as conn:
                    conn.execute(tab.update().where(where).values(**values))

    def _not_dead_lettered(self):
        """Condition on ``exposures``: no dead letter names it (stopped, whatever its status says)."""
        dead = self.t["dead_letters"]
        return self.t["exposures"].c.exposure_id.notin_(
            sa.select(dead.c.exposure_id).where(dead.c.exposure_id.is_not(None)))

    @_retried
    def earlier_undecided(self, field_id: str, mjd: float) -> list[str]:
        """Exposures of a field taken before ``mjd`` that have not reached the template decision.

        Their status is still before subtraction (``registered`` … ``calibrated``); ``template``,
        ``no_template``, ``alerted``, ``failed`` and dead-lettered exposures are decided.
        """
        tab = self.t["exposures"]
        stmt = sa.select(tab.c.exposure_id).where(
            (tab.c.field_id == field_id) & (tab.c.mjd < mjd)
            & tab.c.status.in_(UNDECIDED) & self._not_dead_lettered()
        ).order_by(tab.c.mjd)
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(stmt)]

    @_retried
    def unassociated_before(self, field_id: str, mjd: float, exposure_id: str, lane: str) -> list[str]:
        """Lanes of the field's exposures that come before ``(mjd, lane)`` and have not been
        through cross-match yet (nor stopped: template, no template, failed).

        The order is the observing order, QIP before DIP within one exposure; associating
        candidates into objects in that order makes object ids and light curves independent of
        which worker got there first, so a replay reproduces them.
        """
        exp, runs = self.t["exposures"], self.t["stage_runs"]
        with self.engine.connect() as conn:
            earlier = (exp.c.mjd < mjd) | (exp.c.exposure_id == exposure_id) if lane == "dip" else exp.c.mjd < mjd
            rows = conn.execute(sa.select(exp.c.exposure_id, exp.c.too).where(
                (exp.c.field_id == field_id) & earlier
                & exp.c.status.notin_(("template", "no_template", "failed")) & self._not_dead_lettered())).all()
            if not rows:
                return []
            done = {(r[0], r[1]) for r in conn.execute(sa.select(runs.c.exposure_id, runs.c.lane).where(
                runs.c.exposure_id.in_([r[0] for r in rows])
                & (((runs.c.stage == "crossmatch") & (runs.c.status == "done"))
                   | ((runs.c.stage == "subtraction") & runs.c.status.in_(("template", "no_template"))))))}
        waiting = []
        for eid, too in rows:
            lanes = ("qip", "dip") if too else ("dip",)
            if eid == exposure_id:  # this exposure's quick lane goes before its deep lane
                lanes = lanes[:1] if too else ()
            waiting += [f"{eid}/{ln}" for ln in lanes if (eid, ln) not in done]
        return waiting

    @_retried
    def latest_mjd(self) -> float | None:
        """The newest exposure's MJD (None while there is none)."""
        tab = self.t["exposures"]
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(tab.c.mjd))).scalar()

    @_retried
    def deferred_since(self, exposure_id: str, lane: str, stage: str) -> float:
        """When this stage of this exposure was first deferred (recorded now if it never was)."""
        tab = self.t["stage_runs"]
        key = (tab.c.exposure_id == exposure_id) & (tab.c.lane == lane) & (tab.c.stage == stage)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(tab.c.start, tab.c.status).where(key)).first()
        if row is not None and row[1] == "deferred":
            return row[0]
        now = time.time()
        self.record_stage(exposure_id, lane, stage, "", now, None, status="deferred")
        return now

    def record_stage(self, exposure_id: str, lane: str, stage: str, version: str, start: float,
                     end: float, status: str = "done", reason: str | None = None) -> None:
        self._upsert("stage_runs", dict(exposure_id=exposure_id, lane=lane, stage=stage, version=version,
                                        start=start, end=end, status=status, reason=reason))

    @_retried
    def recent_stage_timings(self, limit: int = 200) -> list[dict]:
        tab = self.t["stage_runs"]
        stmt = sa.select(tab).order_by(tab.c.end.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    # -- templates ----------------------------------------------------------------------
    def template(self, field_id: str, lane: str) -> dict | None:
        rows = self.rows("templates", field_id=field_id, lane=lane)
        return rows[0] if rows else None

    def set_template(self, field_id: str, lane: str, exposure_id: str, path: str, **stats) -> None:
        self._upsert("templates", dict(field_id=field_id, lane=lane, exposure_id=exposure_id, path=path,
                                       created_at=time.time(), **stats))

    def claim_template(self, field_id: str, lane: str, exposure_id: str, path: str, **stats) -> dict:
        """Make this exposure the field's template unless one exists; return the template in force.

        The insert-if-absent is atomic, so two workers racing on a new field agree on one template.
        """
        self._upsert("templates", dict(field_id=field_id, lane=lane, exposure_id=exposure_id, path=path,
                                       created_at=time.time(), **stats), update=False)
        return self.template(field_id, lane)

    # -- ToO fields (filled by the GW stage) -------------------------------------------
    def store_too_fields(self, event_id: str, table) -> int:
        n = 0
        for rank, row in enumerate(table, start=1):
            self._upsert("too_fields", dict(event_id=event_id, field_id=str(row["field_id"]),
                                            prob=float(row["prob"]), cum_prob=float(row["cum_prob"]),
                                            rank=rank, galaxy_score=_get(row, "galaxy_score"),
                                            retracted=False, created_at=time.time()))
            n += 1
        return n

    @_retried
    def retract_too(self, event_id: str) -> None:
        tab = self.t["too_fields"]
        with self.engine.begin() as conn:
            conn.execute(tab.update().where(tab.c.event_id == event_id).values(retracted=True))

    @_retried
    def too_fields(self) -> list[dict]:
        tab = self.t["too_fields"]
        stmt = sa.select(tab).where(tab.c.retracted == sa.false()).order_by(tab.c.event_id, tab.c.rank)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def too_event_for_field(self, field_id: str | None) -> dict | None:
        """The active ToO entry (highest probability) for a field, or None."""
        if field_id is None:
            return None
        rows = [r for r in self.too_fields() if r["field_id"] == field_id]
        return max(rows, key=lambda r: r["prob"]) if rows else None

    # -- candidates, objects, light curves, alerts -------------------------------------
    def upsert_candidate(self, row: Mapping) -> None:
        self._upsert("candidates", row)

    def objects_near(self, field_id: str | None) -> list[dict]:
        return self.rows("objects", field_id=field_id) if field_id else self.rows("objects")

    def upsert_object(self, row: Mapping) -> None:
        self._upsert("objects", row)

    def add_photometry(self, row: Mapping) -> None:
        self._upsert("photometry", row)

    @_retried
    def light_curve(self, object_id: str) -> list[dict]:
        tab = self.t["photometry"]
        stmt = sa.select(tab).where(tab.c.object_id == object_id).order_by(tab.c.mjd)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def alert_published(self, alert_id: str) -> bool:
        return bool(self.rows("alerts", alert_id=alert_id))

    @_retried
    def claim_sends(self, exposure_id: str, lane: str, owner: str, lease_s: float) -> str:
        """Claim the sending of a lane's candidates and alerts for ``owner`` (:mod:`agents.outbox`):
        ``"fresh"`` (nobody sent any: all go out), ``"resumed"`` (an earlier sender, this owner or one
        whose lease of ``lease_s`` ran out, was cut off: some may be on the topics), ``"busy"``
        (another owner's lease runs: wait) or ``"done"`` (all were sent)."""
        tab, now = self.t["sends"], time.time()
        key = (tab.c.exposure_id == exposure_id) & (tab.c.lane == lane)
        try:
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(tab).where(key)).first()
                if row is None:
                    conn.execute(tab.insert().values(exposure_id=exposure_id, lane=lane, owner=owner, renewed_at=now))
                    return "fresh"
                if row.done_at is not None:
                    return "done"
                if row.owner != owner and row.renewed_at + lease_s > now:
                    return "busy"
                taken = conn.execute(tab.update().where(key & (tab.c.owner == row.owner) & (
                    tab.c.renewed_at == row.renewed_at) & tab.c.done_at.is_(None)).values(owner=owner, renewed_at=now))
                return "resumed" if taken.rowcount == 1 else "busy"
        except sa.exc.IntegrityError:  # another owner inserted it first
            return "busy"

    @_retried
    def renew_sends(self, exposure_id: str, lane: str, owner: str, done: bool = False) -> bool:
        """Extend ``owner``'s claim (``done``: all were sent); False when it is not ``owner``'s any more."""
        tab, now = self.t["sends"], time.time()
        with self.engine.begin() as conn:
            return conn.execute(tab.update().where(
                (tab.c.exposure_id == exposure_id) & (tab.c.lane == lane) & (tab.c.owner == owner)
                & tab.c.done_at.is_(None)).values(renewed_at=now, **({"done_at": now} if done else {}))).rowcount == 1

    def record_alert(self, row: Mapping) -> None:
        self._upsert("alerts", row, update=False)

    @_retried
    def record_dead_letter(self, source_topic: str, stage: str, exposure_id: str | None, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.t["dead_letters"].insert().values(
                source_topic=source_topic, stage=stage, exposure_id=exposure_id, reason=reason,
                failed_at=time.time()))


    # -- raw files not published (the watcher) ----------------------------------------
    @_retried
    def note_file(self, sha256: str, path: str, kind: str, reason: str = "") -> bool:
        """Remember a raw file the watcher did not publish; False when the same note exists
        already (for ``rejected``: the same content, under any name)."""
        tab = self.t["files"]
        with self.engine.begin() as conn:
            same = (tab.c.sha256 == sha256) & (tab.c.kind == kind)
            if kind == "duplicate":
                same &= tab.c.path == path
            if conn.execute(sa.select(tab.c.path).where(same)).first():
                return False
            conn.execute(tab.insert().values(sha256=sha256, path=path, kind=kind, reason=reason,
                                             seen_at=time.time()))
        return True

    @_retried
    def clear_dead_letters(self, source_topic: str, exposure_id: str) -> int:
        """Forget the dead letters of ``exposure_id`` from ``source_topic`` (a file that was
        incomplete and is now complete and published); returns how many."""
        tab = self.t["dead_letters"]
        with self.engine.begin() as conn:
            return conn.execute(tab.delete().where((tab.c.source_topic == source_topic)
                                                   & (tab.c.exposure_id == exposure_id))).rowcount


TERMINAL = {"template", "no_template", "failed"}


def lanes_done(db: Database, exposure_id: str) -> bool:
    """An exposure is finished when every lane it takes has alerted or stopped for a reason."""
    exp = db.rows("exposures", exposure_id=exposure_id)
    if not exp:
        return False
    if exp[0]["status"] in TERMINAL or db.count("dead_letters", exposure_id=exposure_id):
        return True
    runs = db.rows("stage_runs", exposure_id=exposure_id)
    lanes = ("qip", "dip") if exp[0]["too"] else ("dip",)
    finished = {r["lane"] for r in runs if r["stage"] == "alert"
                or (r["stage"] == "subtraction" and r["status"] in TERMINAL)}
    return all(lane in finished for lane in lanes)


def _get(row, key):
    try:
        value = row[key]
    except (KeyError, IndexError, ValueError):
        return None
    return None if value is None else float(value)


def _plain(value):
    """numpy scalars and arrays to plain Python for the database."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return json.loads(json.dumps({k: _plain(v) for k, v in value.items()}))
    return value
