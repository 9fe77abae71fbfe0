"""State of the survey in a real database: SQLite by default, PostgreSQL by URL.

Tables (names carry the namespace prefix, so a replay writes beside the live tables; the
ToO field list is an input made from GW notices and is shared by every namespace):
``exposures`` (one row per raw file: status and timings per stage, quality),
``stage_runs`` (one row per stage x lane x exposure), ``templates``, ``too_fields``,
``candidates``, ``objects`` (transients: candidates within 1.5 arcsec), ``photometry``
(light curves incl. forced photometry and upper limits), ``alerts`` and ``dead_letters``.
Every write is an idempotent upsert keyed by a deterministic id, so redelivered
messages change nothing.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite


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
        "dead_letters": T(f"{p}dead_letters", md,
                          C("id", sa.Integer, primary_key=True, autoincrement=True),
                          C("source_topic", sa.String(255)), C("stage", sa.String(32)),
                          C("exposure_id", sa.String(128)), C("reason", sa.Text),
                          C("failed_at", sa.Float)),
    }


class Database:
    """Connection to the pipeline database; ``namespace`` prefixes every table name."""

    def __init__(self, url: str, namespace: str = ""):
        self.url = url
        self.namespace = namespace
        kwargs: dict = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
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
        self.metadata.create_all(self.engine)

    @classmethod
    def from_settings(cls, cfg, namespace: str | None = None) -> "Database":
        if not cfg.database.url:
            cfg.paths.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(cfg.database_url, cfg.database.namespace if namespace is None else namespace)

    # -- generic ------------------------------------------------------------------------
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

    def rows(self, table: str, **where) -> list[dict]:
        tab = self.t[table]
        stmt = sa.select(tab)
        for k, v in where.items():
            stmt = stmt.where(tab.c[k] == v)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def count(self, table: str, **where) -> int:
        tab = self.t[table]
        stmt = sa.select(sa.func.count()).select_from(tab)
        for k, v in where.items():
            stmt = stmt.where(tab.c[k] == v)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    # -- exposures ----------------------------------------------------------------------
    def exposure_known(self, sha256: str, exposure_id: str) -> bool:
        """True when this content or this exposure id has been registered before."""
        tab = self.t["exposures"]
        with self.engine.connect() as conn:
            return conn.execute(sa.select(tab.c.exposure_id).where(
                (tab.c.sha256 == sha256) | (tab.c.exposure_id == exposure_id))).first() is not None

    def register_exposure(self, ev) -> bool:
        """Insert a new raw exposure; False when the same content (sha256) is already known."""
        tab = self.t["exposures"]
        with self.engine.begin() as conn:
            if conn.execute(sa.select(tab.c.exposure_id).where(
                    (tab.c.sha256 == ev.sha256) | (tab.c.exposure_id == ev.exposure_id))).first():
                return False
            conn.execute(tab.insert().values(
                exposure_id=ev.exposure_id, sha256=ev.sha256, path=ev.path, field_id=ev.field_id,
                mjd=ev.mjd, too=ev.too, file_closed_at=ev.file_closed_at, detected_at=ev.detected_at,
                status="ingested", quality={}, flags=[]))
        return True

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
            with self.engine.begin() as conn:
                conn.execute(tab.update().where(tab.c.exposure_id == exposure_id).values(**values))

    def earlier_in_flight(self, field_id: str, mjd: float) -> list[str]:
        """Exposures of a field taken before ``mjd`` that are not yet calibrated (nor failed)."""
        tab = self.t["exposures"]
        stmt = sa.select(tab.c.exposure_id).where(
            (tab.c.field_id == field_id) & (tab.c.mjd < mjd) & tab.c.status.in_(("ingested", "reduced")))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(stmt)]

    def record_stage(self, exposure_id: str, lane: str, stage: str, version: str, start: float,
                     end: float, status: str = "done", reason: str | None = None) -> None:
        self._upsert("stage_runs", dict(exposure_id=exposure_id, lane=lane, stage=stage, version=version,
                                        start=start, end=end, status=status, reason=reason))

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

    def retract_too(self, event_id: str) -> None:
        tab = self.t["too_fields"]
        with self.engine.begin() as conn:
            conn.execute(tab.update().where(tab.c.event_id == event_id).values(retracted=True))

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

    def light_curve(self, object_id: str) -> list[dict]:
        tab = self.t["photometry"]
        stmt = sa.select(tab).where(tab.c.object_id == object_id).order_by(tab.c.mjd)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def alert_published(self, alert_id: str) -> bool:
        return bool(self.rows("alerts", alert_id=alert_id))

    def record_alert(self, row: Mapping) -> None:
        self._upsert("alerts", row, update=False)

    def record_dead_letter(self, source_topic: str, stage: str, exposure_id: str | None, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.t["dead_letters"].insert().values(
                source_topic=source_topic, stage=stage, exposure_id=exposure_id, reason=reason,
                failed_at=time.time()))


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
