"""One exposure's chain, in memory: the front half once, then each lane's back half.

A worker that takes an exposure event runs :data:`ast3stream.pipeline.STAGES` on arrays it
holds: reduction → sources → astrometry → photometry → quality, then for every lane the
exposure takes (QIP first for a ToO exposure, then DIP) subtraction → detection →
crossmatch → classify → alert. After each stage it

* applies the stage's state operations to the database (idempotent upserts keyed by
  deterministic ids, retried while the database is away),
* records the stage run and publishes the stage's event to ``{prefix}.{stage}.{lane}``
  (progress, monitoring, replay: nobody re-reads it to carry on),
* hands durable products to the product store, which writes them off the alert path.

Between the stages nothing is read back from disk. The stream layer looks up what a stage
needs from the state (the field's template, its known objects, light-curve histories, the
ToO entry) and waits, asynchronously and for a bounded time, where the observing order
matters: a field's template is its earliest acceptable exposure, and candidates are
associated into objects in observing order (QIP before DIP within one exposure), so a
replay reproduces object ids and histories.

A worker configured for only some stages (``--stages``) stops where the next stage is not
its own: it writes the exposure's state to the product store and publishes the event with
``handoff = true``; the worker that runs the next stage consumes that topic and carries on
from the store (:meth:`Chain.resume`).

A crash mid-chain loses nothing: the exposure event's offset is committed only when the
chain has finished, so the event is redelivered and the chain runs again from the raw file
with the same ids; a lane's candidates and alerts go out once (:mod:`agents.outbox`).
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import heapq
import logging
import os
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import replace
from typing import Awaitable, Callable, Iterable

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ast3stream import pipeline as pl
from ast3stream.config import Settings
from ast3stream.events import ExposureEvent, StageEvent, stage_event_id
from ast3stream.image import Frame
from ast3stream.subtraction.backend import use_gpu
from ast3stream.pipeline import (BACK, FRONT, SLOW, STAGES, AddPhotometry, ClaimTemplate, Exposure, Lane,
                                 StageError, TemplateInForce, UpdateExposure, UpsertCandidate, UpsertObject)

from .db import Database, lanes_done
from .gw import too_entry
from .metrics import METRICS
from .retry import retrying
from .store import ProductStore

log = logging.getLogger("ast3stream.chain")
TIMINGS = logging.getLogger("ast3stream.timings")   #: stages' seconds per step (INFO, logged by workers)

Publish = Callable[[str, bytes, bytes], Awaitable[None]]  #: (topic name without prefix, key, value)
Submit = Callable[..., Awaitable]                         #: (priority, fn, *args, **kwargs) -> result
Sent = Callable[..., Awaitable[dict]]                     #: (topic names, {alert id: key}, registry) -> {alert id: names}


class StageFailed(RuntimeError):
    """A stage raised: the exposure goes to the dead letters with ``stage`` and the reason."""

    def __init__(self, stage: str, cause: BaseException):
        why = str(cause) if isinstance(cause, StageError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{stage}: {why}" if isinstance(cause, StageError) else f"{stage} failed: {why}")
        self.stage = stage
        self.cause = cause


async def _inline(priority, fn, *args, **kwargs):
    return fn(*args, **kwargs)


async def _nowhere(names, wanted, registry=None) -> dict[str, set[str]]:
    return {a: set() for a in wanted}


class Gate:
    """At most ``n`` holders at a time; waiters are let in by priority (lowest first), then in order."""

    def __init__(self, n: int):
        self.free = n
        self._waiting: list = []   # heap of (priority, seq, future)
        self._seq = 0

    @contextlib.asynccontextmanager
    async def held(self, priority: tuple):
        if self.free > 0 and not self._waiting:
            self.free -= 1
        else:
            fut = asyncio.get_running_loop().create_future()
            self._seq += 1
            heapq.heappush(self._waiting, (priority, self._seq, fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():   # let in just as it was cancelled: pass it on
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


def release_host_memory() -> None:
    """Give freed host memory back to the system: CuPy's pinned-memory pool keeps every
    page-locked block a transfer used (a difference's planes come back from the GPU through it,
    1.7 GB per full-size DIP exposure) and glibc keeps the threads' freed chunks in its arenas;
    both count in the worker's resident memory. Blocks in use stay where they are. Logs what it
    gave back when that is more than 0.5 GB."""
    before = resident_gb()
    if (cp := sys.modules.get("cupy")) is not None:
        cp.get_default_pinned_memory_pool().free_all_blocks()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    after = resident_gb()
    if before - after > 0.5:
        log.warning("gave back %.1f GB of host memory (resident %.1f GB now)", before - after, after)


def resident_gb() -> float:
    """This process's resident memory (``VmRSS``) in GB; 0 where ``/proc`` has none."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) / 1024 ** 2 for line in f if line.startswith("VmRSS:")), 0.0)
    except OSError:
        return 0.0


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:   # not glibc
    _LIBC = None


class Resources:
    """A worker's long-lived inputs: settings, database, product store, calibration,
    catalogues, classifiers, and the fields' templates (kept in memory up to
    ``worker.templates_gb``, the least recently used dropped first)."""

    def __init__(self, cfg: Settings, db: Database | None = None, store: ProductStore | None = None):
        self.cfg = cfg
        self._db = db
        self.store = store or ProductStore.open(cfg.products_dir)
        self._lock = threading.Lock()
        self._cache: dict = {}
        self._templates: OrderedDict = OrderedDict()

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database.from_settings(self.cfg)
        return self._db

    def _get(self, key, factory):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = factory()
            return self._cache[key]

    @property
    def calibration(self):
        from ast3stream.reduction import Calibration

        def load():
            d = self.cfg.calib_dir
            if any(d.glob("master*.fits")):
                return Calibration.load(d)
            bias, flats = sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits"))
            if bias and flats:
                cal = Calibration.build(bias, flats, self.cfg.reduction, self.cfg.detector)
                cal.save(d)
                return cal
            return None
        return self._get("calib", load)

    @property
    def refcat(self):
        from ast3stream.catalogs.refcat import RefCat
        return self._get("refcat", lambda: RefCat.from_file(self.cfg.refcat_path))

    @property
    def galaxies(self):
        from ast3stream.catalogs.galaxies import open_galaxies
        path = self.cfg.galaxies_path
        return self._get("galaxies", lambda: open_galaxies(path, self.cfg.paths.data_dir / "catalogs")
                         if path.exists() else None)

    def asteroids(self, mjd: float):
        """The night's asteroid table (built once per night, the previous night's dropped)."""
        from ast3stream.catalogs.asteroids import AsteroidTable, night_midpoint
        from ast3stream.catalogs.mpcorb import read_elements
        path = self.cfg.mpcorb_path
        elements = self._get("orbits", lambda: read_elements(path) if path.exists() else None)
        if elements is None:
            return None
        t_mid = night_midpoint(mjd, self.cfg.detector.site_lon)
        with self._lock:
            for key in [k for k in self._cache if isinstance(k, tuple) and k[0] == "asteroids" and k[1] != t_mid]:
                del self._cache[key]
        return self._get(("asteroids", t_mid), lambda: AsteroidTable.build(elements, t_mid))

    def known(self, name: str):
        """GCVS (``variable_stars``) or TNS (``transients``) from ``paths.<name>``, when present."""
        from ast3stream.catalogs import known
        path = self.cfg.paths.resolve(name, {"variable_stars": "gcvs.parquet", "transients": "tns.parquet"}[name])
        return self._get(name, lambda: getattr(known, f"open_{name}")(path) if path.exists() else None)

    @property
    def wire(self):
        """How alerts are framed on each topic (:class:`~ast3stream.alerts.serialize.AlertWire`),
        with the schema registry of ``alerts.registry_url`` when one is configured."""
        from ast3stream.alerts.serialize import AlertWire

        from .security import registry

        a = self.cfg.alerts
        return self._get("wire", lambda: AlertWire(self.cfg.kafka.prefix, a.framing, a.topic_framing,
                                                   registry(a, self.cfg.security)))

    def classifier(self, lane: str):
        from ast3stream.classify import RealBogus
        return self._get(("rb", lane), lambda: RealBogus.load(lane, device=self.cfg.classify.device))

    def warm(self, stages: Iterable[str]) -> str:
        """Before a worker consumes: put the calibration on the GPU (a GPU reduction backend), build
        the asteroid table of the newest exposure's night and open the galaxies, load the
        classifiers (torch included) and score one input, and prepare the newest templates in
        force (up to ``subtraction.template_cache``), so that the first exposure after a start
        does not pay for them; returns what was done."""
        stages, done = set(stages), []
        if "reduction" in stages and use_gpu(self.cfg.reduction.backend) and self.calibration is not None:
            import cupy

            self.calibration.on_device(cupy)
            done.append("calibration on the GPU")
        if "crossmatch" in stages:   # a restart mid-night: that night's asteroid table and the galaxies
            mjd = self.db.latest_mjd()
            if mjd is not None and self.asteroids(mjd) is not None:
                done.append("the night's asteroids")
            if self.galaxies is not None:
                done.append("galaxies")
        if "classify" in stages:
            for lane in ("qip", "dip"):
                clf = self.classifier(lane)
                clf.score_inputs(np.zeros((1, 4, clf.stamp_size, clf.stamp_size), np.float32))
            done.append("classifiers")
        if "subtraction" in stages:
            rows = sorted(self.db.rows("templates"), key=lambda r: r["created_at"], reverse=True)
            for row in rows[:self.cfg.subtraction.template_cache]:
                pl.prepare_template(self.template(row, row["lane"]), subtraction=self.cfg.subtraction,
                                    detector=self.cfg.detector)
            done.append(f"{min(len(rows), self.cfg.subtraction.template_cache)} templates")
        return " and ".join(done) or "nothing"

    def threshold(self, lane: str) -> float:
        """The score an alert needs: ``alerts.min_score`` when set, else the lane model's own."""
        if self.cfg.alerts.min_score is not None:
            return self.cfg.alerts.min_score
        return float(self.classifier(lane).info.get("threshold", self.cfg.classify.real_threshold))

    # -- templates ----------------------------------------------------------------------
    def template(self, row: dict, lane: str) -> TemplateInForce:
        """The template of a database row, from memory or the product store."""
        cache_key = (row["path"], row["created_at"])
        with self._lock:
            if cache_key in self._templates:
                self._templates.move_to_end(cache_key)
                return self._templates[cache_key]
        frame = Frame.read(self.store.path(row["path"]))
        return self.remember(row, lane, frame)

    def remember(self, row: dict, lane: str, frame: Frame) -> TemplateInForce:
        binning = self.cfg.detector.qip_binning if lane == "qip" else 1
        tmpl = TemplateInForce(exposure_id=row["exposure_id"], frame=frame, binning=binning, key=row["path"],
                               version=row["created_at"],
                               stats={k: row.get(k) for k in ("maglim", "pcc", "zp", "fwhm_px")})
        with self._lock:
            self._templates[(row["path"], row["created_at"])] = tmpl
            budget = self.cfg.worker.templates_gb * 1e9
            while len(self._templates) > 1 and sum(frame_bytes(t.frame) for t in self._templates.values()) > budget:
                self._templates.popitem(last=False)
        return tmpl


class Chain:
    """Runs exposures through the stages this worker owns (all of them by default).

    ``publish`` sends one message and returns once the broker has it; ``submit`` runs a
    function on the worker's priority pool (default: inline, for ``process_exposure``);
    ``sent`` tells which topics already hold the messages of a lane whose sending was cut off
    (:func:`agents.outbox.topics_holding`; default: none, for ``process_exposure``); ``lease_s``:
    how long this chain's claim on sending a lane holds without being renewed (another worker
    takes it over after that).
    """

    def __init__(self, res: Resources, publish: Publish, submit: Submit = _inline,
                 stages: Iterable[str] | None = None, poll_s: float = 0.5, sent: Sent = _nowhere,
                 lease_s: float = 10.0):
        self.res = res
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  #: of its send claims
        self.lease_s = lease_s
        self.cfg = res.cfg
        self.db = res.db
        self.publish = publish
        self.sent = sent
        self.submit = submit
        self.stages = {s.name for s in STAGES} if stages is None else set(stages)
        self.poll_s = poll_s
        self._slow: set[asyncio.Task] = set()
        self._running: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # exposure id -> lock
        self._subtracting = Gate(self.cfg.worker.subtractions_at_once)

    # -- entry points -------------------------------------------------------------------
    async def run(self, ev: ExposureEvent) -> None:
        """The whole chain of one exposure (from its raw file); returns once its products are stored.

        An exposure event delivered again (after a crash, a stop or a rebalance) waits for a run
        of the same exposure in this worker, and does nothing when the database shows the
        exposure finished; otherwise the chain runs again from the raw file, with the same ids.
        """
        lock = self._running.setdefault(ev.exposure_id, asyncio.Lock())
        async with lock:
            if await self._db(lanes_done, self.db, ev.exposure_id):
                log.info("%s: finished already, not run again", ev.exposure_id)
                return
            await self._run(ev)

    async def _run(self, ev: ExposureEvent) -> None:
        exp = Exposure(exposure_id=ev.exposure_id, raw_path=ev.path, field_id=ev.field_id, mjd=ev.mjd, too=ev.too,
                       namespace=ev.namespace)
        event = StageEvent.from_exposure(ev, exp.lane_names[0])
        try:
            for st in FRONT:
                if st.name not in self.stages:
                    return await self._handoff(exp, None, event)
                event = await self._stage(st, exp, None, event)
            await self._lanes(exp, event)
        finally:
            await self._stored(exp)

    async def _stored(self, exp: Exposure) -> None:
        """Wait for the exposure's product writes, so that its message is committed only after them;
        then give the host memory its arrays held back to the system (:func:`release_host_memory`)."""
        store = self.res.store
        await asyncio.to_thread(store.flush, store.key(exp.namespace or "live", exp.exposure_id) + "/")
        exp.lanes.clear()
        await asyncio.to_thread(release_host_memory)

    async def resume(self, ev: StageEvent) -> None:
        """Carry on from another worker's handoff: the exposure's state is in the product store."""
        exp = await self._db(load_state, self.res.store, ev)
        try:
            await self._carry_on(exp, ev)
        finally:
            await self._stored(exp)

    async def _carry_on(self, exp: Exposure, ev: StageEvent) -> None:
        if ev.stage == "quality" or not pl.stage(ev.stage).per_lane:
            rest = [s for s in FRONT if FRONT.index(s) > FRONT.index(pl.stage(ev.stage))]
            event = ev
            for st in rest:
                if st.name not in self.stages:
                    return await self._handoff(exp, None, event)
                event = await self._stage(st, exp, None, event)
            if exp.too and ev.stage == "quality":  # a front-half handoff is published once per lane
                return await self._back(exp, exp.lane(ev.lane), event)
            return await self._lanes(exp, event)
        lane = exp.lane(ev.lane)
        row = await self._db(self.db.template, exp.field_id, ev.lane)
        lane.template = await asyncio.to_thread(self.res.template, row, ev.lane)
        await self._back(exp, lane, ev, after=ev.stage)

    def prepare(self, tmpl: TemplateInForce) -> None:
        """Prepare a template for subtraction beside the alert path (after the lanes' stages,
        before PSF photometry), so that the field's next exposure finds it ready."""
        if "subtraction" not in self.stages:
            return

        async def run():
            try:
                await self.submit((1, 1), pl.prepare_template, tmpl, subtraction=self.cfg.subtraction,
                                  detector=self.cfg.detector)
            except Exception:  # its first subtraction prepares it again and reports the error
                log.exception("preparing template %s failed", tmpl.key)

        task = asyncio.ensure_future(run())
        self._slow.add(task)
        task.add_done_callback(self._slow.discard)

    async def drain(self) -> None:
        """Wait for the slow-lane work started by earlier chains."""
        if self._slow:
            await asyncio.gather(*self._slow, return_exceptions=True)

    # -- the two halves -----------------------------------------------------------------
    async def _lanes(self, exp: Exposure, event: StageEvent) -> None:
        lanes = exp.lane_names
        forks = {lanes[0]: event}
        for name in lanes[1:]:  # a ToO exposure forks into the deep lane after the front half
            forks[name] = fork = replace(event, lane=name, versions=dict(event.versions),
                                         metrics=dict(event.metrics), flags=list(event.flags),
                                         products=dict(event.products), timings=list(event.timings))
            fork.event_id = stage_event_id(exp.exposure_id, name, fork.versions)
            await self._progress(fork)
        if "subtraction" not in self.stages:
            for name in lanes:
                await self._handoff(exp, exp.lane(name), forks[name])
            return
        for name in lanes:
            await self._back(exp, exp.lane(name), forks[name])
        if self.cfg.photometry.psf_lane and exp.frame is not None:
            task = asyncio.create_task(self._psf(exp, event))
            self._slow.add(task)
            task.add_done_callback(self._slow.discard)

    async def _back(self, exp: Exposure, lane: Lane, event: StageEvent, after: str | None = None) -> None:
        stages = list(BACK)
        if after is not None:
            stages = stages[[s.name for s in stages].index(after) + 1:]
        elif (tmpl := await self._template(exp, lane, event)) is None:
            return
        else:
            lane.template = tmpl
        for st in stages:
            if st.name not in self.stages:
                return await self._handoff(exp, lane, event)
            if st.name == "crossmatch":
                await self._observing_order(exp, lane)
            event = await self._stage(st, exp, lane, event)
        exp.lanes.pop(lane.name, None)  # the lane's arrays go once its alerts are out

    async def _stage(self, st: pl.Stage, exp: Exposure, lane: Lane | None, event: StageEvent) -> StageEvent:
        cfg = self.cfg
        kwargs = {name: getattr(cfg, name) for name in st.sections}
        kwargs.update(await self._db(self._inputs, st, exp, lane, event))
        rank = [s.name for s in STAGES].index(st.name)
        priority = (0 if event.lane == "qip" else 1, -rank)
        # SFFT's working memory: ``worker.subtractions_at_once`` subtractions at a time, QIP first (the wait is not the stage's)
        async with self._subtracting.held(priority) if st.name == "subtraction" else contextlib.nullcontext():
            start = time.time()
            try:
                out = await self.submit(priority, st.func, exp, *(() if lane is None else (lane,)), **kwargs)
            except Exception as exc:
                raise StageFailed(st.name, exc) from exc
        target = exp.metrics if lane is None else lane.metrics
        target.update({k: float(v) for k, v in out.metrics.items() if pl._finite(v) is not None})
        if out.flags:
            exp.flags = sorted(set(exp.flags) | set(out.flags))
        await self._apply(exp, out.ops)
        for name, obj in out.products.items():
            self.res.store.put(product_key(self.res.store, exp, event.lane, PRODUCT_FILES[name]), writer(name, obj))
        version = getattr(cfg, st.section).version
        nxt = event.next(st.name, version, start)
        nxt.metrics.update({k: v for k, v in {**exp.metrics, **(lane.metrics if lane else {})}.items()
                            if pl._finite(v) is not None})
        nxt.flags = list(exp.flags)
        if out.steps:
            TIMINGS.info("%s %s %s: %s", exp.exposure_id, event.lane, st.name,
                         ", ".join(f"{k} {v:.2f}" for k, v in out.steps.items()))
        if st.name == "classify":
            nxt.versions["rb_model"] = lane.model_version
        if st.name == "alert":
            await self._send_alerts(exp, lane, out, event.file_closed_at)
        await self._db(self.db.record_stage, exp.exposure_id, event.lane, st.name, version, start,
                       nxt.timings[-1]["end"], out.status)
        METRICS.stage(st.name, event.lane, nxt.timings[-1]["end"] - start)
        await self._progress(nxt)
        return nxt

    def _inputs(self, st: pl.Stage, exp: Exposure, lane: Lane | None, event: StageEvent) -> dict:
        """What the stage needs from the state and the worker's resources (in a thread)."""
        res, out = self.res, {}
        for name in st.inputs:
            if name == "calibration":
                out[name] = res.calibration
            elif name == "refcat":
                out[name] = res.refcat
            elif name == "galaxies":
                out[name] = res.galaxies
            elif name == "asteroids":
                out[name] = res.asteroids(exp.mid_mjd(self.cfg.detector.exptime))
            elif name in ("variable_stars", "transients"):
                out[name] = res.known(name)
            elif name == "model":
                out[name] = res.classifier(lane.name)
            elif name == "objects":
                rows = self.db.objects_near(exp.field_id)
                out[name] = Table(rows=[(o["object_id"], o["ra"], o["dec"], o["n_det"], o["first_mjd"], o["last_mjd"])
                                        for o in rows],
                                  names=("object_id", "ra", "dec", "n_det", "first_mjd", "last_mjd"),
                                  dtype=(str, float, float, int, float, float))
            elif name == "history":
                oids = {str(o) for o in lane.candidates["object_id"]} if len(lane.candidates) else set()
                out[name] = {oid: self.db.light_curve(oid) for oid in oids}
            elif name == "too":
                out[name] = too_entry(self.db, exp.field_id) if exp.too else None
            elif name == "threshold":
                out[name] = res.threshold(lane.name)
            elif name == "versions":
                out[name] = dict(event.versions)
            elif name == "file_closed_at":
                out[name] = event.file_closed_at
            else:
                raise KeyError(f"stage {st.name} needs {name!r}, which the chain does not know")
        return out

    # -- templates and observing order ----------------------------------------------------
    async def _template(self, exp: Exposure, lane: Lane, event: StageEvent) -> TemplateInForce | None:
        """The template this lane subtracts, or None when the exposure is (or cannot have) one.

        The template is the field's EARLIEST acceptable image: an exposure that overtook the
        field's earlier ones (a ToO, a second worker, a replay) waits until they have been
        judged, for at most ``template.max_wait_s`` from its first wait.
        """
        cfg, db = self.cfg, self.db
        start = time.time()
        row = await self._db(db.template, exp.field_id, lane.name) if exp.field_id else None
        if row is not None and row["exposure_id"] == exp.exposure_id:
            row = None  # redelivered after a crash: this exposure is the template, judged again below
        if row is None and exp.field_id and exp.mjd is not None:
            await self._wait(exp, lane, "subtraction", functools.partial(db.earlier_undecided, exp.field_id, exp.mjd),
                             cfg.template.max_wait_s, "not judged for the template yet")
        if row is None:
            ok, why = pl.acceptable_template(exp, template=cfg.template)
            if ok and exp.field_id:
                row = await self._claim_template(exp, lane.name)
            if row is None or row["exposure_id"] == exp.exposure_id:
                status = "template" if ok and exp.field_id else "no_template"
                if lane.name == "dip" or not exp.too:
                    await self._apply(exp, [UpdateExposure(status=status)])
                await self._db(db.record_stage, exp.exposure_id, lane.name, "subtraction",
                               cfg.subtraction.version, start, time.time(), status, why or None)
                return None
        return await asyncio.to_thread(self.res.template, row, lane.name)

    async def _claim_template(self, exp: Exposure, lane: str) -> dict:
        """Store this exposure's template frames, then claim the field for both lanes.

        The claims are atomic inserts-if-absent: two workers racing on a new field agree on
        one template (the loser's stored frames are deleted). The QIP claim names the DIP
        winner, whose frames were stored before its claim.
        """
        store, det = self.res.store, self.cfg.detector
        frames = pl.template_frames(exp, detector=det)
        key = functools.partial(template_key, store, exp.namespace, exp.field_id)
        for name, frame in frames.items():
            await asyncio.to_thread(store.put, key(exp.exposure_id, name), frame.write, sync=True)
        dip = await self._apply(exp, [ClaimTemplate(exp.field_id, "dip", exp.exposure_id, key(exp.exposure_id, "dip"),
                                                    pl.template_stats(exp, "dip", detector=det))])
        winner = dip["exposure_id"]
        stats = {k: dip[k] for k in ("maglim", "pcc", "zp")}
        stats["fwhm_px"] = dip["fwhm_px"] / det.qip_binning if dip["fwhm_px"] is not None else None
        qip = await self._apply(exp, [ClaimTemplate(exp.field_id, "qip", winner, key(winner, "qip"), stats)])
        if winner == exp.exposure_id:
            for name, row in (("dip", dip), ("qip", qip)):
                self.prepare(self.res.remember(row, name, frames[name]))
        else:
            for name in frames:
                await asyncio.to_thread(store.delete, key(exp.exposure_id, name))
        return dip if lane == "dip" else qip

    async def _observing_order(self, exp: Exposure, lane: Lane) -> None:
        if exp.field_id and exp.mjd is not None:
            await self._wait(exp, lane, "crossmatch",
                             functools.partial(self.db.unassociated_before, exp.field_id, exp.mjd, exp.exposure_id,
                                               lane.name),
                             self.cfg.crossmatch.order_wait_s, "not associated yet")

    async def _wait(self, exp: Exposure, lane: Lane, stage: str, pending, max_wait_s: float, why: str) -> None:
        """Wait while ``pending()`` lists earlier work, for at most ``max_wait_s`` from this
        stage's first wait (recorded in the database, so a restart does not start it again)."""
        since = None
        while waiting := await self._db(pending):
            if since is None:
                since = await self._db(self.db.deferred_since, exp.exposure_id, lane.name, stage)
            if time.time() - since >= max_wait_s:
                log.warning("%s/%s: gave up waiting after %.0f s: %s %s", exp.exposure_id, lane.name,
                            max_wait_s, ", ".join(waiting), why)
                return
            log.info("%s/%s %s waits: field %s: %s %s", exp.exposure_id, lane.name, stage, exp.field_id,
                     ", ".join(waiting), why)
            await asyncio.sleep(self.poll_s)

    # -- outputs --------------------------------------------------------------------------
    async def _send_alerts(self, exp: Exposure, lane: Lane, out: pl.StageOutput, file_closed_at: float) -> None:
        """Every candidate to ``candidates``; those above the threshold to ``alerts`` and
        ``alerts.{lane}``, notices to ``gcn``: each once, under the lane's send claim
        (:mod:`agents.outbox`); then the lane's bundle and alert packets to the product store."""
        wire, eid = self.res.wire, exp.exposure_id
        while (claim := await self._db(self.db.claim_sends, eid, lane.name, self.owner, self.lease_s)) == "busy":
            await asyncio.sleep(self.poll_s)   # another worker sends this lane (a rebalance): wait for it
        if claim == "done":
            log.info("%s/%s: candidates and alerts sent already", eid, lane.name)
            return
        sends = [(a, ["candidates"] + (["alerts", f"alerts.{lane.name}"] + (["gcn"] if a.notice is not None else [])
                                       if a.passed else [])) for a in out.alerts]
        held = {}
        if claim == "resumed":   # an earlier send was cut off: what is on the topics already
            held = await retrying("alerts", self.sent, sorted({n for _, names in sends for n in names}),
                                  {a.alert_id: a.object_id.encode() for a, _ in sends}, wire.registry)
            log.warning("%s/%s: sending was cut off; %d of %d candidates' messages on their topics already",
                        eid, lane.name, sum(bool(v) for v in held.values()), len(sends))
        lost = asyncio.Event()

        async def heartbeat():   # the claim holds while a send waits, however long the broker takes to acknowledge
            while await self._db(self.db.renew_sends, eid, lane.name, self.owner):
                await asyncio.sleep(self.lease_s / 3)
            lost.set()

        beat = asyncio.create_task(heartbeat())
        try:
            for a, names in sends:
                for name in [n for n in names if n not in held.get(a.alert_id, ())]:   # framing, schema id per topic
                    if lost.is_set():
                        log.warning("%s/%s: another worker took over sending (this one's lease ran out)",
                                    eid, lane.name)
                        return
                    await self._send(name, a.object_id.encode(),
                                     a.notice if name == "gcn" else wire.encode(a.packet, name))
                if a.passed:
                    now = time.time()
                    await self._db(self.db.record_alert, dict(
                        alert_id=a.alert_id, candidate_id=a.candidate_id, object_id=a.object_id, exposure_id=eid,
                        lane=lane.name, score=a.score, digest=a.digest, published_at=now,
                        latency_s=now - file_closed_at))
                    METRICS.alert(lane.name, now - file_closed_at)
        finally:
            beat.cancel()
        passed = [a.value for a in out.alerts if a.passed]
        if passed:
            store = self.res.store
            store.put(product_key(store, exp, lane.name, PRODUCT_FILES["alerts"]), writer("alerts", passed))
        await self._apply(exp, [UpdateExposure(status="alerted")])
        await self._db(self.db.renew_sends, eid, lane.name, self.owner, True)

    async def _psf(self, exp: Exposure, event: StageEvent) -> None:
        """PSF photometry beside the alert path (lowest priority); its table goes to the store."""
        start = time.time()
        kwargs = {name: getattr(self.cfg, name) for name in SLOW.sections}
        try:
            out = await self.submit((2, 0), SLOW.func, exp, **kwargs)
        except Exception:
            log.exception("%s: PSF photometry failed (slow lane; the alerts are not affected)", exp.exposure_id)
            return
        store = self.res.store
        store.put(product_key(store, exp, event.lane, PRODUCT_FILES["psf"]), writer("psf", out.products["psf"]))
        await self._db(self.db.record_stage, exp.exposure_id, event.lane, "psf", self.cfg.photometry.version, start,
                       time.time(), "done")

    async def _handoff(self, exp: Exposure, lane: Lane | None, event: StageEvent) -> None:
        """Stop here: the next stage belongs to another worker (see the module docstring)."""
        products = await asyncio.to_thread(save_state, self.res.store, exp, lane)
        out = replace(event, products={**event.products, **products}, handoff=True)
        await self._progress(out)

    async def _progress(self, ev: StageEvent) -> None:
        await self._send(f"{ev.stage}.{ev.lane}", ev.exposure_id.encode(), ev.encode())

    async def _send(self, name: str, key: bytes, value: bytes) -> None:
        await retrying(name, self.publish, name, key, value)

    async def _apply(self, exp: Exposure, ops: list):
        """Apply state operations; returns the template in force for a :class:`ClaimTemplate`."""
        return await self._db(apply_ops, self.db, exp.exposure_id, ops)

    async def _db(self, fn, *args):
        return await retrying("database", asyncio.to_thread, fn, *args)


def frame_bytes(frame: Frame) -> int:
    """Bytes of a frame's pixel arrays (data, mask, variance)."""
    return sum(a.nbytes for a in (frame.data, frame.mask, frame.var) if a is not None)


def apply_ops(db: Database, exposure_id: str, ops: list):
    """Apply a stage's state operations to the database (every one an idempotent upsert)."""
    result = None
    for op in ops:
        if isinstance(op, UpdateExposure):
            db.update_exposure(exposure_id, status=op.status, flags=op.flags, quality=op.quality)
        elif isinstance(op, ClaimTemplate):
            result = db.claim_template(op.field_id, op.lane, op.exposure_id, op.key, **op.stats)
        elif isinstance(op, UpsertCandidate):
            db.upsert_candidate(op.row)
        elif isinstance(op, UpsertObject):
            db.upsert_object(op.row)
        elif isinstance(op, AddPhotometry):
            db.add_photometry(op.row)
        else:
            raise TypeError(f"unknown state operation {op!r}")
    return result


# --------------------------------------------------------------------------------------
# product keys and the state of an exposure in the store (handoffs between workers)


#: the file name of each durable product under ``<namespace>/<exposure>/<lane>/``
PRODUCT_FILES = {"thumbnail": "thumbnail.png", "bundle": "bundle.fits", "alerts": "alerts.avro", "psf": "psf.fits"}


def writer(name: str, obj) -> Callable:
    """The function that writes product ``name`` (see :data:`PRODUCT_FILES`) to a path."""
    if name == "thumbnail":
        import matplotlib.image

        return lambda path: matplotlib.image.imsave(path, obj, cmap="gray", vmin=0, vmax=1, origin="lower",
                                                    format="png")
    if name == "bundle":
        from ast3stream.products import write_bundle

        return lambda path: write_bundle(path, *obj)
    if name == "alerts":
        from ast3stream.alerts import decode, write_avro_file

        return lambda path: write_avro_file([decode(v) for v in obj], path)
    if name == "psf":
        return lambda path: obj.write(path, format="fits")
    raise KeyError(f"no writer for product {name!r}")


def product_key(store: ProductStore, exp: Exposure, lane: str, *name: str) -> str:
    return store.key(exp.namespace or "live", exp.exposure_id, lane, *name)


def template_key(store: ProductStore, namespace: str, field_id: str, exposure_id: str, lane: str) -> str:
    return store.key(namespace or "live", "templates", field_id, f"{exposure_id}_{lane}.fits")


_TABLES = ("sources", "stars", "photometry")


def save_state(store: ProductStore, exp: Exposure, lane: Lane | None) -> dict[str, str]:
    """Write what the next stage needs (synchronously); return ``{product name: key}``."""
    where = lane.name if lane is not None else (exp.lane_names[0])
    out: dict[str, str] = {}

    def put(name: str, write) -> None:
        out[f"state.{name}"] = store.put(product_key(store, exp, where, "state", name), write, sync=True)

    if exp.frame is not None:
        put("frame.fits", exp.frame.write)
    for name in _TABLES:
        table = getattr(exp, name)
        if table is not None:
            put(f"{name}.fits", functools.partial(table.write, format="fits"))
    if lane is not None:
        if lane.aligned is not None:
            put("aligned.fits", lane.aligned.write)
        if lane.difference is not None:
            put("difference.fits", functools.partial(write_difference, lane.difference))
        if lane.candidates is not None:
            put("candidates.fits", functools.partial(lane.candidates.write, format="fits"))
        if lane.stamps is not None:
            put("stamps.npy", lambda path: np.save(open(path, "wb"), lane.stamps))
        if lane.model_version:
            out["state.model_version"] = lane.model_version
    return out


def load_state(store: ProductStore, ev: StageEvent) -> Exposure:
    """The exposure a handoff event describes, its arrays read back from the store."""
    exp = Exposure(exposure_id=ev.exposure_id, raw_path=ev.raw_path, field_id=ev.field_id, mjd=ev.mjd, too=ev.too,
                   namespace=ev.namespace, metrics=dict(ev.metrics), flags=list(ev.flags))
    p = {k[len("state."):]: v for k, v in ev.products.items() if k.startswith("state.")}
    if "frame.fits" in p:
        exp.frame = Frame.read(store.path(p["frame.fits"]))
    for name in _TABLES:
        if f"{name}.fits" in p:
            setattr(exp, name, Table.read(store.path(p[f"{name}.fits"])))
    if exp.photometry is not None and exp.frame is not None:
        exp.frame.sources = exp.photometry
    if pl.stage(ev.stage).per_lane:
        lane = exp.lane(ev.lane)
        if "aligned.fits" in p:
            lane.aligned = Frame.read(store.path(p["aligned.fits"]))
        if "difference.fits" in p:
            lane.difference = read_difference(store.path(p["difference.fits"]))
        if "candidates.fits" in p:
            lane.candidates = Table.read(store.path(p["candidates.fits"]))
        if "stamps.npy" in p:
            lane.stamps = np.load(store.path(p["stamps.npy"]))
        lane.model_version = p.get("model_version", "")
    return exp


def write_difference(diff, path) -> None:
    hdus = fits.HDUList([fits.PrimaryHDU(),
                         fits.ImageHDU(diff.diff.astype(np.float32), diff.header, name="DIFF"),
                         fits.ImageHDU(diff.noise.astype(np.float32), diff.header, name="NOISE"),
                         fits.ImageHDU(diff.mask.astype(np.int16), name="MASK")])
    for k, v in diff.stats.items():
        if isinstance(v, (int, float, str, bool)) and len(k) <= 8:
            hdus[0].header[k.upper()] = v
    hdus.writeto(path, overwrite=True)


def read_difference(path):
    from ast3stream.subtraction import Difference

    with fits.open(path, memmap=False) as hdul:
        stats = {k.lower(): v for k, v in hdul[0].header.items() if k not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND")}
        return Difference(diff=np.asarray(hdul["DIFF"].data, dtype=np.float32),
                          noise=np.asarray(hdul["NOISE"].data, dtype=np.float32),
                          mask=np.asarray(hdul["MASK"].data, dtype=np.uint16),
                          header=hdul["DIFF"].header.copy(), stats=stats)


# --------------------------------------------------------------------------------------
# in-process, no broker


def process_exposure(path, res: Resources, file_closed_at: float | None = None) -> list[tuple[str, bytes, bytes]]:
    """Run one raw file through every stage in this process (no broker); return the messages
    ``(topic name, key, value)`` the stream would publish."""
    from ast3stream.rawfile import describe

    messages: list[tuple[str, bytes, bytes]] = []

    async def collect(name, key, value):
        messages.append((name, key, value))

    exp = describe(path, res, file_closed_at)
    res.db.register_exposure(exp)
    res.db.mark_published(exp.exposure_id)
    chain = Chain(res, collect)

    async def run():
        await chain.run(exp)
        await chain.drain()

    asyncio.run(run())
    res.store.flush()
    return messages
