"""The faust app: the exposure agents that run each exposure's chain, plus the GW and watcher tasks.

An exposure agent consumes ``{prefix}.exposures`` (deep lane) or ``{prefix}.exposures.too``
(ToO: quick lane, then deep lane) and runs the exposure's whole chain in memory
(:class:`agents.chain.Chain`), up to ``worker.in_flight`` exposures at a time. A message is
acknowledged (and its offset committed) only once it has been dealt with: run, skipped or
dead-lettered; so a crash or a stop redelivers the exposures in progress, which run again
with the same ids. A worker also consumes the stage topics
before the stages it owns: it carries on from handoff events (published by a worker given
only some stages, ``--stages``) and skips progress events once it has checked them.
Infrastructure that is away for a while (the database, see
:class:`~agents.db.DatabaseUnavailable`, or the broker) holds the message: the step that
failed is tried again with backoff, never dead-lettered. Any other exception sends the
original message and the reason to the dead-letter topic; processing continues.

Stage work runs on a small priority pool: quick-lane (QIP) work always goes before
deep-lane (DIP) work, and later stages before earlier ones, so a ToO exposure overtakes a
DIP backlog and exposures in flight drain before new ones start.

Run a worker with ``python -m agents.app --config settings.json [--stages ...] [--watch]``
(``ast3stream worker`` is the same); several workers on several machines may share the load,
each with its own ``--web-port``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import os
import threading
import time
import traceback
from concurrent.futures import Future

import faust
import numpy as np
from aiokafka import AIOKafkaProducer

from ast3stream import events as evmod
from ast3stream.config import Settings
from ast3stream.events import ExposureEvent, MalformedMessage, StageEvent
from ast3stream.pipeline import STAGES

from .chain import Chain, Resources, StageFailed, release_host_memory
from .metrics import CONTENT_TYPE, METRICS
from .outbox import topics_holding
from .retry import retrying
from .security import faust_credentials, kafka_options
from .topics import stage_topic, topic

log = logging.getLogger("ast3stream.agents")


class PriorityPool:
    """A thread pool whose queue is ordered by priority (lower first), FIFO within a priority."""

    def __init__(self, workers: int):
        self._heap: list = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._threads = [threading.Thread(target=self._loop, daemon=True, name=f"stage-{i}") for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, priority: tuple, fn, *args) -> Future:
        fut: Future = Future()
        with self._cv:
            heapq.heappush(self._heap, (priority, next(self._seq), fut, fn, args))
            self._cv.notify()
        return fut

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._heap:
                    self._cv.wait()
                _, _, fut, fn, args = heapq.heappop(self._heap)
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # handed to the agent, which dead-letters it
                    fut.set_exception(exc)


def handoff_sources(stages: set[str]) -> list[str]:
    """The stages whose events a worker running ``stages`` consumes: every stage whose next
    stage is its own. Only handoff events are run; the others (progress of a worker that
    goes on itself) are checked and skipped, so every stage topic has a consumer and the
    group's lag drains to zero."""
    names = [s.name for s in STAGES]
    return [prev for prev, name in zip(names, names[1:]) if name in stages]


def known_exposure(db, ev: StageEvent) -> None:
    """A stage event names an exposure this pipeline registered, else :class:`MalformedMessage`."""
    if not db.count("exposures", exposure_id=ev.exposure_id):
        raise MalformedMessage(f"{ev.stage} event of {ev.exposure_id!r}: no such exposure was registered "
                               "(not an event of this pipeline)")


class Ticking:
    """A faust timer that survives its own errors: faust stops the whole worker when a timer
    raises, so ``@app.timer(interval)`` over ``@Ticking(name)`` logs an error that is not
    transient (those are retried inside, :func:`~agents.retry.retrying`) with its reason, once
    per distinct cause (then at DEBUG), counts it (``ast3_timer_errors_total{timer}``) and lets
    the timer tick again at its next interval. :meth:`isolated` does the same for one item of a
    tick, so that one bad item does not stop the tick's others."""

    def __init__(self, name: str):
        self.name = name
        self._logged: set[str] = set()

    def __call__(self, fn):
        @functools.wraps(fn)
        async def tick(*args):
            with self.isolated():
                await fn(*args)
        return tick

    @contextlib.contextmanager
    def isolated(self, subject: str = ""):
        try:
            yield
        except Exception as exc:   # CancelledError (a stop) is not an Exception: it goes through
            METRICS.timer_error(self.name)
            cause = f"{subject + ': ' if subject else ''}{type(exc).__name__}: {exc}"
            if cause in self._logged:
                log.debug("timer %s: %s (again)", self.name, cause)
            else:
                self._logged.add(cause)
                log.error("timer %s: %s; it runs again on its next tick (logged once per cause)",
                          self.name, cause, exc_info=exc)


def add_gw_agent(app: faust.App, res: Resources, prefix: str, dead_letter, bootstrap: str) -> None:
    """GW notices (LVK JSON or VOEvent bytes) on ``{prefix}.gw`` update the ToO field list under the
    notice policy and write the coming night's plan (:mod:`agents.gw`); expired lists are dropped
    every minute, coverage reports rewritten every ``gw.coverage_every_s``. With ``gw.gcn.enabled``
    the GCN Kafka bridge runs here too."""
    from .gw import GWState, on_notice, write_coverage

    async def gw_agent(stream):
        async for event in stream.events():
            message = event.message
            try:
                origin = (message.key or b"").decode(errors="replace") or message.topic   # the GCN topic, by the bridge
                await retrying("gw", asyncio.to_thread, on_notice, message.value, res.db, res.cfg, origin)
            except Exception as exc:
                await dead_letter("gw", message, f"GW notice rejected: {type(exc).__name__}: {exc}", exc, None)

    app.agent(app.topic(topic(prefix, "gw")), name="gw", concurrency=1)(gw_agent)

    @app.timer(60.0)
    @Ticking("expire_too")
    async def expire_too():
        await retrying("gw", asyncio.to_thread, GWState(res.db).expire)

    coverage = Ticking("gw_coverage")

    @app.timer(res.cfg.gw.coverage_every_s)
    @coverage
    async def gw_coverage():
        for ev in await retrying("gw", asyncio.to_thread, GWState(res.db).events, "active"):
            with coverage.isolated(f"event {ev['event_id']}"):   # a bad event's map: the others' reports still come
                await retrying("gw", asyncio.to_thread, write_coverage, res.db, res.cfg, ev)

    if res.cfg.gw.gcn.enabled:
        @app.task
        async def gcn_bridge():
            from .gcn_bridge import bridge

            await retrying("gcn", bridge, res.cfg.gw.gcn, bootstrap, prefix)


class PipelineApp(faust.App):
    async def _consumer_wait_empty(self, consumer, logger) -> None:
        # a rebalance waits for the exposures in flight (``stream_wait_empty``); a stop does not:
        # it takes seconds, and their messages, not acknowledged, are redelivered and run again
        if not self.should_stop:
            await super()._consumer_wait_empty(consumer, logger)


def make_app(cfg: Settings, bootstrap: str, stages: list[str] | None = None, watch: bool = False,
             web_port: int | None = None, workers: int | None = None, res: Resources | None = None) -> faust.App:
    prefix = cfg.kafka.prefix
    app = PipelineApp(
        f"{prefix}-pipeline", broker=f"kafka://{bootstrap}", value_serializer="raw", key_serializer="raw",
        web_host=cfg.kafka.web_host, web_bind=cfg.kafka.web_host, web_port=web_port or cfg.kafka.web_port,
        web_enabled=True,
        broker_session_timeout=cfg.kafka.session_timeout_s, broker_heartbeat_interval=cfg.kafka.heartbeat_s,
        broker_commit_every=1, broker_commit_interval=0.5, producer_linger_ms=0,
        producer_max_request_size=cfg.kafka.max_message_bytes, consumer_max_fetch_size=cfg.kafka.max_message_bytes,
        topic_allow_declare=False, topic_disable_leader=True, store="memory://",
        consumer_auto_offset_reset="earliest", datadir=str(cfg.paths.data_dir / "faust"),
        stream_wait_empty=True, broker_max_poll_interval=3600.0,
        broker_credentials=faust_credentials(cfg.security),
    )
    res = res or Resources(cfg)
    kafka = cfg.kafka.model_copy(update={"bootstrap": bootstrap})   # the broker this worker uses

    @app.on_rebalance_complete.connect
    async def assigned(sender, **kwargs):   # the moment a (re)started worker consumes
        log.warning("consuming %d partitions", len(app.consumer.assignment()))
    pool = PriorityPool(workers or max(1, os.cpu_count() or 1))
    own = {s.name for s in STAGES} if stages is None else set(stages) & {s.name for s in STAGES}

    async def publish(name: str, key: bytes, value: bytes):
        fut = await app.topic(topic(prefix, name)).send(key=key, value=value)
        await fut  # RecordMetadata once the broker has the message

    def submit(priority: tuple, fn, *args, **kwargs):
        return asyncio.wrap_future(pool.submit(priority, functools.partial(fn, *args, **kwargs)))

    chain = Chain(res, publish, submit, stages=own,
                  sent=functools.partial(topics_holding, kafka, cfg.security))

    async def dead_letter(stage: str, message, reason: str, exc: BaseException, exposure_id: str | None):
        log.warning("%s: dead letter for %s: %s", stage, exposure_id or "?", reason)
        METRICS.dead_letter(stage)
        value = evmod.deadletter(message.topic, stage, reason, type(exc).__name__, key=message.key,
                                 value=message.value, partition=message.partition, offset=message.offset,
                                 exposure_id=exposure_id,
                                 traceback="".join(traceback.format_exception(exc))[-8000:])
        await retrying(stage, publish, "deadletter", message.key or b"", value)
        await retrying(stage, asyncio.to_thread, res.db.record_dead_letter, message.topic, stage, exposure_id, reason)
        if exposure_id:
            await retrying(stage, asyncio.to_thread, res.db.update_exposure, exposure_id, status="failed")

    def add_agent(name: str, sources: list[str], run, decode, concurrency: int):
        async def agent(stream):
            stream = stream.noack()  # acked once dealt with: a worker stopped mid-chain leaves it to be redelivered
            async for event in stream.events():
                message = event.message
                exposure_id = None
                try:
                    incoming = decode(message.value)
                    exposure_id = incoming.exposure_id
                    if isinstance(incoming, StageEvent) and not incoming.handoff:
                        # progress of a worker that goes on itself: checked, then skipped
                        await retrying(name, asyncio.to_thread, known_exposure, res.db, incoming)
                    else:
                        await run(incoming)
                except MalformedMessage as exc:
                    await dead_letter(name, message, str(exc), exc, exposure_id)
                except StageFailed as exc:
                    await dead_letter(exc.stage, message, str(exc), exc.cause, exposure_id)
                except Exception as exc:  # anything else: keep the message and the reason, go on
                    await dead_letter(name, message, f"{name} failed: {type(exc).__name__}: {exc}", exc, exposure_id)
                await stream.ack(event)

        app.agent(app.topic(*sources), name=name, concurrency=concurrency)(agent)

    if "reduction" in own:
        for lane, name in (("dip", "exposures"), ("qip", "exposures.too")):
            add_agent(f"chain-{lane}", [topic(prefix, name)], chain.run, ExposureEvent.decode, cfg.worker.in_flight)
    if sources := handoff_sources(own):
        for lane in ("qip", "dip"):
            add_agent(f"resume-{lane}", [stage_topic(prefix, s, lane) for s in sources], chain.resume,
                      StageEvent.decode, cfg.worker.in_flight)

    if stages is None or "gw" in stages:
        add_gw_agent(app, res, prefix, dead_letter, bootstrap)

    @app.page("/metrics")
    async def metrics(web, request):
        """Prometheus text: stage and end-to-end latency histograms, alerts, dead letters, lag."""
        from .status import topic_lag

        try:
            METRICS.set_lag(await topic_lag(cfg.model_copy(update={"kafka": kafka})))
        except Exception as exc:  # the broker away: the other metrics still come
            log.warning("metrics: consumer lag unavailable: %s", exc)
        return web.bytes(METRICS.text(), content_type=CONTENT_TYPE)

    if res.wire.registry is not None and (stages is None or "alert" in stages):
        @app.task
        async def register_alert_schema():
            """Register the alert schema for every alert topic on start (the wire caches the ids);
            a registry that is away is asked again every 5 s."""
            from ast3stream.alerts.registry import RegistryError

            for name in ("candidates", "alerts", "alerts.qip", "alerts.dip"):
                while True:
                    try:
                        await asyncio.to_thread(res.wire.schema_id, name, cfg.alerts.schema_version)
                        break
                    except RegistryError as exc:
                        log.warning("%s; trying again in 5 s", exc)
                        await asyncio.sleep(5)

    if stages is None or "filters" in stages:
        @app.task
        async def filter_streams():
            from .filterstream import FilterStream

            stream = FilterStream(kafka, registry=res.wire.registry, client_options=kafka_options(cfg.security),
                                  metrics=METRICS)
            await retrying("filters", stream.run)

    if watch:
        @app.timer(cfg.products.prune_every_s)
        @Ticking("prune_products")
        async def prune_products():
            n = await retrying("prune", asyncio.to_thread, res.store.prune, res.db, cfg.products.retention_days)
            if n:
                log.warning("pruned %d product files past retention", n)

        @app.task
        async def watcher_task():
            from .watcher import Watcher

            async def watch():
                producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0,
                                            max_request_size=cfg.kafka.max_message_bytes,
                                            **kafka_options(cfg.security))
                await producer.start()
                try:
                    await Watcher(cfg.watch_dir, res, producer, prefix).run()
                finally:
                    await producer.stop()

            await retrying("watcher", watch)  # a fresh watcher looks at every file again

    return app


def warm_subtraction(cfg: Settings) -> None:
    """Compile the subtraction for both lanes' tile shapes and kernel half-widths (the detector's,
    :func:`ast3stream.subtraction.engine.lane_tile_shapes`) before the worker joins its
    consumer group, so that no exposure waits for the compiler. Compiled kernels are cached on
    disk (numba: ``NUMBA_CACHE_DIR`` or its user cache; CuPy: ``CUPY_CACHE_DIR``, by default
    ``<data_dir>/cache/cupy``), so only a machine's first worker compiles."""
    from ast3stream.subtraction import use_gpu, warm_up

    os.environ.setdefault("CUPY_CACHE_DIR", str(cfg.paths.data_dir / "cache" / "cupy"))
    start = time.time()
    try:
        shapes = warm_up(cfg, gpu=use_gpu(cfg.subtraction.backend))
    except Exception:  # the worker still runs: its first exposures compile what is missing
        log.exception("subtraction warm-up failed after %.1f s", time.time() - start)
        return
    log.warning("subtraction warmed for tile shapes %s in %.1f s", shapes, time.time() - start)


def gil_probe(threshold_s: float, dumps: int = 10) -> None:
    """Diagnostics (``AST3STREAM_GIL_PROBE_S``): a thread that wakes every ``threshold_s / 5`` s.
    When it cannot run for ``threshold_s`` (a thread held the GIL in C code: a kernel, a
    library call), faulthandler's C watchdog writes every thread's stack to stderr (the worker
    log) for the first ``dumps`` stalls; each stall is logged with its length."""
    import faulthandler
    import sys

    step = threshold_s / 5
    out = sys.__stderr__   # the process's stderr: faust replaces sys.stderr by a log proxy with no file descriptor

    def loop():
        stalls, last = 0, time.monotonic()
        while True:
            if stalls < dumps:
                faulthandler.dump_traceback_later(threshold_s, file=out)
            time.sleep(step)
            now = time.monotonic()
            if now - last - step >= threshold_s:
                stalls += 1
                log.warning("GIL probe: no thread switch for %.2f s (stall %d)", now - last - step, stalls)
            last = now

    threading.Thread(target=loop, daemon=True, name="gil-probe").start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ast3stream worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="settings file (JSON or TOML)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap address (default: kafka.bootstrap)")
    parser.add_argument("--stages", help="comma-separated stage names (default: all)")
    parser.add_argument("--watch", action="store_true", help="also run the folder watcher")
    parser.add_argument("--web-port", type=int)
    parser.add_argument("--workers", type=int, help="threads for stage work (default: CPU count)")
    parser.add_argument("--loglevel", default="warn")
    args = parser.parse_args(argv)
    cfg = Settings.load(args.config)
    bootstrap = args.bootstrap or cfg.kafka.bootstrap
    if not bootstrap:
        parser.error("a worker needs a broker: --bootstrap or kafka.bootstrap (`ast3stream run` starts one)")
    if probe := os.environ.get("AST3STREAM_GIL_PROBE_S"):
        gil_probe(float(probe))
    if args.stages is None or "subtraction" in args.stages.split(","):
        warm_subtraction(cfg)
    from ast3stream.sources import strips
    from ast3stream.sources.extract import STRIP_MIN_PIXELS

    if cfg.detector.nx_raw * cfg.detector.ny_raw >= STRIP_MIN_PIXELS:  # full-size frames: strip workers, started once
        from ast3stream.front import warm_up

        strips.pool(strips.n_workers(cfg.sources.workers))
        log.warning("front half and detection loaded in %.1f s", warm_up(cfg))  # the first exposure as fast as the next
    stages = args.stages.split(",") if args.stages else None
    res = Resources(cfg)
    start = time.time()
    what = res.warm(stages or [s.name for s in STAGES])
    log.warning("%s warmed in %.1f s", what, time.time() - start)
    app = make_app(cfg, bootstrap, stages=stages, watch=args.watch, web_port=args.web_port, workers=args.workers,
                   res=res)
    release_host_memory()   # what the warm-ups' transfers left in the pinned pool
    from faust.worker import Worker

    logging.basicConfig(level=args.loglevel.upper().replace("WARN", "WARNING"))
    timings = logging.getLogger("ast3stream.timings")   # at INFO whatever --loglevel: its own handler
    timings.setLevel(logging.INFO)
    timings.propagate = False
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [TIMINGS] %(message)s"))
    timings.addHandler(handler)
    Worker(app, loglevel=args.loglevel, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
