"""``ast3stream replay``: re-run the pipeline over stored exposure events into a new namespace.

The stored ``{prefix}.exposures`` and ``{prefix}.exposures.too`` events are selected by
offset range, night (UTC date of MJD-OBS) or field, and republished under the topic
prefix ``{prefix}.replay.{namespace}`` with the database tables prefixed by the
namespace, so live topics and tables are never touched. Settings can be changed for the
replay (``--set classify.version=2``). Event and alert ids depend only on the exposure and
the stage versions, never on the namespace: a replay with the same versions reproduces
the live alert ids, and a consumer can diff the two runs.

Selection by time uses the events' own MJD, not the broker's timestamp index (Tansu's
ListOffsets by time is unreliable).

A namespace that holds a replay already is refused (its old result would stand), unless
``force``: then its tables and products are deleted first (:func:`clear_namespace`).
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ast3stream.config import Settings
from agents.db import Database
from ast3stream.events import ExposureEvent, MalformedMessage

from .broker import InTurn
from .runner import Stack, wait_for
from .security import kafka_options
from .store import ProductStore
from .topics import topic


def night_of(mjd: float | None) -> str | None:
    if mjd is None:
        return None
    # the observing night is the UTC date 12 h before the exposure (an Asian site's night spans 0h UT)
    unix = (mjd - 40587.0) * 86400.0 - 12 * 3600
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y%m%d")


async def stored_exposures(bootstrap: str, prefix: str, from_offset: int = 0, to_offset: int | None = None,
                           night: str | None = None, field: str | None = None,
                           client_options: dict | None = None) -> list[ExposureEvent]:
    """``client_options``: :func:`agents.security.kafka_options` (SASL/TLS) for every client."""
    opts = client_options or {}
    names = [topic(prefix, "exposures"), topic(prefix, "exposures.too")]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **opts)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    out = []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **opts)
    await consumer.start()
    try:
        for t in described:
            for p in sorted(part["partition"] for part in t["partitions"]):
                out += await _read_partition(consumer, TopicPartition(t["topic"], p), from_offset, to_offset)
    finally:
        await consumer.stop()
    if night:
        out = [e for e in out if night_of(e.mjd) == night]
    if field:
        out = [e for e in out if e.field_id == field]
    return sorted(out, key=lambda e: (e.mjd or 0.0, e.exposure_id))


async def _read_partition(consumer: AIOKafkaConsumer, tp: TopicPartition, from_offset: int,
                          to_offset: int | None) -> list[ExposureEvent]:
    """The exposure events of one partition between two offsets (malformed ones were dead-lettered live)."""
    out = []
    consumer.assign([tp])
    consumer.seek(tp, from_offset)
    while True:
        msgs = (await consumer.getmany(tp, timeout_ms=2000)).get(tp, [])
        for m in msgs:
            if to_offset is not None and m.offset > to_offset:
                return out
            try:
                out.append(ExposureEvent.decode(m.value))
            except MalformedMessage:
                continue
        if not msgs:
            return out


async def republish(bootstrap: str, prefix: str, exposures: list[ExposureEvent], namespace: str,
                    client_options: dict | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, **(client_options or {}))
    await producer.start()
    turn = InTurn(producer)
    try:
        for exp in exposures:
            exp.namespace = namespace
            await turn.send(prefix, exp)
    finally:
        await producer.stop()


def replay_settings(cfg: Settings, namespace: str, overrides: list[str]) -> Settings:
    data = cfg.model_dump()
    data["database"]["namespace"] = namespace
    data["kafka"]["prefix"] = f"{cfg.kafka.prefix}.replay.{namespace}"
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        data[section][name] = value
    return Settings(**data)


def clear_namespace(cfg: Settings, db: Database) -> None:
    """Delete a replay namespace's tables and products (``cfg``: the replay's settings). Its
    topics stay (Kafka topics are append-only): the new run's messages follow the old ones,
    and the namespace's consumer group carries on after those."""
    db.clear()
    store = ProductStore.open(cfg.products_dir)
    store.delete(store.key(db.namespace))


def replay(cfg: Settings, namespace: str, *, from_offset: int = 0, to_offset: int | None = None,
           night: str | None = None, field: str | None = None, overrides: list[str] = (),
           timeout: float = 3600.0, force: bool = False) -> dict:
    if not cfg.kafka.bootstrap:
        raise SystemExit("replay reads stored events from a running broker: give --bootstrap "
                         "(the embedded broker keeps its topics in memory while it runs)")
    if not namespace:
        raise SystemExit("replay needs a --namespace of its own (the live tables are never replayed into)")
    opts = kafka_options(cfg.security)
    rcfg = replay_settings(cfg, namespace, list(overrides))
    db = Database.from_settings(rcfg)
    if held := db.count("exposures"):
        if not force:
            raise SystemExit(f"namespace {namespace!r} holds a replay already ({held} exposures): give another "
                             "--namespace, or --force to delete it first")
        clear_namespace(rcfg, db)
    exposures = asyncio.run(stored_exposures(cfg.kafka.bootstrap, cfg.kafka.prefix, from_offset, to_offset,
                                             night, field, opts))
    if not exposures:
        return {"namespace": namespace, "prefix": rcfg.kafka.prefix, "exposures": 0, "alerts": 0, "unfinished": []}
    with Stack(rcfg, watch=False) as stack:
        for exp in exposures:
            db.register_exposure(exp)
        asyncio.run(republish(rcfg.kafka.bootstrap, rcfg.kafka.prefix, exposures, namespace, opts))
        for exp in exposures:
            db.mark_published(exp.exposure_id)
        left = wait_for(db, [e.exposure_id for e in exposures], timeout, stack)
    return {"namespace": namespace, "prefix": rcfg.kafka.prefix, "exposures": len(exposures),
            "alerts": db.count("alerts"), "unfinished": left}


def main(args, cfg: Settings) -> int:
    result = replay(cfg, args.namespace, from_offset=args.from_offset, to_offset=args.to_offset,
                    night=args.night, field=args.field, overrides=args.set, timeout=args.timeout,
                    force=args.force)
    print(result)
    return 0 if not result["unfinished"] else 1
