"""The faust app: one thin agent per stage and lane, plus the watcher task.

Every agent does the same four things: decode the incoming event, run its stage function
from :mod:`ast3stream.pipeline` on a worker thread, publish the results and wait for the
broker's acknowledgement, then move on (faust commits the offset once the agent has moved
past a message, so a crash redelivers the message in progress; a stopping worker or one
losing partitions to a rebalance first finishes the message in progress). Infrastructure
that is away for a while (the database, see :class:`~ast3stream.db.DatabaseUnavailable`, or
the broker) holds the message: the step that failed is tried again with backoff, never
dead-lettered. Any other exception sends the original message and the reason to the
dead-letter topic; processing continues.

CPU work runs on a small priority pool: quick-lane (QIP) work always goes before
deep-lane (DIP) work, and later stages before earlier ones, so a ToO exposure overtakes a
DIP backlog and every exposure drains through the pipe before new ones start.

Run a worker with ``python -m agents.app --config settings.json [--stages ...] [--lanes ...] [--watch]``
(``ast3stream worker`` is the same); several workers on several machines may share the load,
each with its own ``--web-port``.
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import logging
import os
import threading
import time
import traceback
from concurrent.futures import Future

import faust
from aiokafka import AIOKafkaProducer

from ast3stream import events as evmod
from ast3stream.config import Settings
from ast3stream.events import ExposureEvent, MalformedMessage, StageEvent
from ast3stream.pipeline import LANES, SLOW_STAGES, STAGES, Context, Deferred, Stage, StageError

from .retry import retrying
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


def source_topic(prefix: str, stage: Stage, lane: str) -> str:
    if stage.source == "ingest":
        return topic(prefix, "exposures.too" if lane == "qip" else "exposures")
    return stage_topic(prefix, stage.source, lane)


def add_gw_agent(app: faust.App, ctx: Context, prefix: str, dead_letter) -> None:
    """GW notices (LVK JSON or VOEvent bytes) on ``{prefix}.gw`` update the ToO field list."""
    from ast3stream.gw.too import ingest

    stage = Stage("gw", None, "gw")

    async def gw_agent(stream):
        async for event in stream.events():
            message = event.message
            try:
                notice, table = await retrying("gw", asyncio.to_thread, ingest, message.value, ctx.db, ctx.cfg)
                log.warning("GW %s %s: %s", notice.superevent_id, notice.alert_type,
                            "retracted" if table is None else f"{len(table)} ToO fields")
            except Exception as exc:
                await dead_letter(stage, message, f"GW notice rejected: {type(exc).__name__}: {exc}", exc, None)

    app.agent(app.topic(topic(prefix, "gw")), name="gw", concurrency=1)(gw_agent)


def make_app(cfg: Settings, bootstrap: str, stages: list[str] | None = None, lanes: tuple[str, ...] = LANES,
             watch: bool = False, web_port: int | None = None, workers: int | None = None) -> faust.App:
    prefix = cfg.kafka.prefix
    app = faust.App(
        f"{prefix}-pipeline", broker=f"kafka://{bootstrap}", value_serializer="raw", key_serializer="raw",
        web_host="127.0.0.1", web_port=web_port or cfg.kafka.web_port, web_enabled=True,
        broker_session_timeout=cfg.kafka.session_timeout_s, broker_heartbeat_interval=cfg.kafka.heartbeat_s,
        broker_commit_every=1, broker_commit_interval=0.5, producer_linger_ms=0,
        producer_max_request_size=cfg.kafka.max_message_bytes, consumer_max_fetch_size=cfg.kafka.max_message_bytes,
        topic_allow_declare=False, topic_disable_leader=True, store="memory://",
        consumer_auto_offset_reset="earliest", datadir=str(cfg.paths.data_dir / "faust"),
        stream_wait_empty=True, broker_max_poll_interval=3600.0,
    )
    ctx = Context(cfg)
    pool = PriorityPool(workers or max(1, os.cpu_count() or 1))
    chosen = [s for s in (*STAGES, *SLOW_STAGES) if stages is None or s.name in stages]

    async def publish(name: str, key: bytes, value: bytes):
        fut = await app.topic(topic(prefix, name)).send(key=key, value=value)
        return await fut  # RecordMetadata once the broker has the message

    async def dead_letter(stage: Stage, message, reason: str, exc: BaseException, exposure_id: str | None):
        log.warning("%s: dead letter for %s: %s", stage.name, exposure_id or "?", reason)
        value = evmod.deadletter(message.topic, stage.name, reason, type(exc).__name__, key=message.key,
                                 value=message.value, partition=message.partition, offset=message.offset,
                                 exposure_id=exposure_id,
                                 traceback="".join(traceback.format_exception(exc))[-8000:])
        await retrying(stage.name, publish, "deadletter", message.key or b"", value)
        await retrying(stage.name, asyncio.to_thread, ctx.db.record_dead_letter, message.topic, stage.name,
                       exposure_id, reason)
        if exposure_id:
            await retrying(stage.name, asyncio.to_thread, ctx.db.update_exposure, exposure_id, status="failed")

    def add_agent(stage: Stage, lane: str, rank: int):
        src = app.topic(source_topic(prefix, stage, lane))
        priority = (0 if lane == "qip" else 1, -rank if stage not in SLOW_STAGES else 99)

        name = f"{stage.name}-{lane}"

        def run(incoming: StageEvent):
            return asyncio.wrap_future(pool.submit(priority, stage.func, incoming, ctx))

        async def agent(stream):
            async for event in stream.events():
                message = event.message
                exposure_id = None
                try:
                    if stage.source == "ingest":
                        exp = ExposureEvent.decode(message.value)
                        incoming = StageEvent.from_exposure(exp, lane)
                    else:
                        incoming = StageEvent.decode(message.value)
                    exposure_id = incoming.exposure_id
                    # each step is retried on its own, so a retry never repeats a published output
                    result = await retrying(name, run, incoming)
                    for out in result.events:
                        await retrying(name, publish, f"{stage.name}.{out.lane}", out.exposure_id.encode(),
                                       out.encode())
                    for m in result.messages:
                        await retrying(name, publish, m.name, m.key, m.value)
                        if m.on_published:
                            await retrying(name, asyncio.to_thread, m.on_published)
                except Deferred as exc:  # offer it again later, behind what is queued now
                    log.info("%s: %s deferred: %s", stage.name, exposure_id, exc)
                    await asyncio.sleep(exc.retry_after)
                    await retrying(name, publish, message.topic[len(prefix) + 1:], message.key or b"", message.value)
                except MalformedMessage as exc:
                    await dead_letter(stage, message, str(exc), exc, exposure_id)
                except StageError as exc:
                    await dead_letter(stage, message, f"{stage.name}: {exc}", exc, exposure_id)
                except Exception as exc:  # anything else: keep the message and the reason, go on
                    await dead_letter(stage, message, f"{stage.name} failed: {type(exc).__name__}: {exc}",
                                      exc, exposure_id)

        app.agent(src, name=name, concurrency=1)(agent)

    for rank, stage in enumerate(chosen):
        for lane in lanes:
            add_agent(stage, lane, rank)

    if stages is None or "gw" in stages:
        add_gw_agent(app, ctx, prefix, dead_letter)

    if watch:
        @app.timer(cfg.products.prune_every_s)
        async def prune_products():
            from ast3stream.products import prune

            n = await asyncio.to_thread(prune, cfg.products_dir, ctx.db, cfg.products.retention_days)
            if n:
                log.warning("pruned %d intermediate product files", n)

        @app.task
        async def watcher_task():
            from .watcher import Watcher

            async def watch():
                producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0,
                                            max_request_size=cfg.kafka.max_message_bytes)
                await producer.start()
                try:
                    await Watcher(cfg.watch_dir, ctx, producer, prefix).run()
                finally:
                    await producer.stop()

            await retrying("watcher", watch)  # a fresh watcher looks at every file again

    return app


def warm_subtraction(cfg: Settings) -> None:
    """Compile SFFT for ``subtraction.warm_shapes`` (15-50 s per shape on a CPU, more on a GPU)
    before the worker joins its consumer group, so that no exposure waits for the compiler."""
    from ast3stream.subtraction import use_gpu, warm_up

    start = time.time()
    warm_up(cfg, gpu=use_gpu(cfg.subtraction.backend))
    log.warning("subtraction compiled for tile shapes %s in %.1f s", cfg.subtraction.warm_shapes, time.time() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ast3stream worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="settings file (JSON or TOML)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap address (default: kafka.bootstrap)")
    parser.add_argument("--stages", help="comma-separated stage names (default: all)")
    parser.add_argument("--lanes", default="qip,dip")
    parser.add_argument("--watch", action="store_true", help="also run the folder watcher")
    parser.add_argument("--web-port", type=int)
    parser.add_argument("--workers", type=int, help="threads for stage work (default: CPU count)")
    parser.add_argument("--loglevel", default="warn")
    args = parser.parse_args(argv)
    cfg = Settings.load(args.config)
    bootstrap = args.bootstrap or cfg.kafka.bootstrap
    if not bootstrap:
        parser.error("a worker needs a broker: --bootstrap or kafka.bootstrap (`ast3stream run` starts one)")
    if cfg.subtraction.warm_shapes and (args.stages is None or "subtraction" in args.stages.split(",")):
        warm_subtraction(cfg)
    app = make_app(cfg, bootstrap, stages=args.stages.split(",") if args.stages else None,
                   lanes=tuple(args.lanes.split(",")), watch=args.watch, web_port=args.web_port,
                   workers=args.workers)
    from faust.worker import Worker

    logging.basicConfig(level=args.loglevel.upper().replace("WARN", "WARNING"))
    Worker(app, loglevel=args.loglevel, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
