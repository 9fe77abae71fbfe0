"""Filter streams (as Fink's and Lasair's): users' named filters, run server-side, each with
its own topics.

Definitions live in the compacted topic ``{prefix}.filters`` (key = filter name, value = a
:class:`~ast3stream.alerts.filters.FilterSpec` as JSON, an empty value removes it), so they
survive restarts and every worker sees the same set. :class:`FilterStream` reads them all,
then consumes ``{prefix}.alerts.{lane}`` (consumer group ``{prefix}-filters``, so a restart
resumes) and copies every alert that passes a filter, bytes unchanged (same framing and schema
id), to ``{prefix}.filter.{name}.{lane}``. Filters added or removed while it runs apply from
the next alert on. Messages that are not alerts are skipped with a warning (the stages'
dead letters already hold their story).
"""
from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ast3stream.alerts.filters import FilterError, FilterSpec
from ast3stream.alerts.reader import view
from ast3stream.alerts.serialize import decode
from ast3stream.config import KafkaConfig
from ast3stream.events import MalformedMessage

from .broker import ensure_topics
from .topics import filter_topic, topic, topic_config

log = logging.getLogger("ast3stream.filters")
LANES = ("qip", "dip")


async def _ensure_filter_topics(kafka: KafkaConfig, specs, opts: dict) -> None:
    names = {filter_topic(kafka.prefix, s.name, lane): topic_config(kafka, f"filter.{s.name}.{lane}")
             for s in specs for lane in s.lanes}
    names[topic(kafka.prefix, "filters")] = topic_config(kafka, "filters")
    await ensure_topics(kafka.bootstrap, names, kafka.partitions, kafka.replication, opts)


async def put_filter(kafka: KafkaConfig, spec: FilterSpec, client_options: dict | None = None) -> None:
    """Store (or replace) ``spec`` and create its topics."""
    opts = client_options or {}
    await _ensure_filter_topics(kafka, [spec], opts)
    await _produce(kafka, spec.name, spec.to_json(), opts)


async def remove_filter(kafka: KafkaConfig, name: str, client_options: dict | None = None) -> None:
    """Remove filter ``name`` (a tombstone; its topics stay until their retention ends)."""
    await _produce(kafka, name, None, client_options or {})


async def _produce(kafka: KafkaConfig, key: str, value: bytes | None, opts: dict) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=0, **opts)
    await producer.start()
    try:
        await producer.send_and_wait(topic(kafka.prefix, "filters"), value, key=key.encode())
    finally:
        await producer.stop()


async def list_filters(kafka: KafkaConfig, client_options: dict | None = None) -> dict[str, FilterSpec]:
    """The filters in force: the latest definition of each name, read to the end of the topic."""
    opts = client_options or {}
    await _ensure_filter_topics(kafka, [], opts)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, group_id=None, **opts)
    await consumer.start()
    try:
        specs: dict[str, FilterSpec] = {}
        await _read_filters(consumer, topic(kafka.prefix, "filters"), specs, to_end=True)
        return specs
    finally:
        await consumer.stop()


async def _read_filters(consumer: AIOKafkaConsumer, name: str, specs: dict, to_end: bool) -> None:
    """Apply the filter messages available to ``specs`` (with ``to_end``: all up to the end offsets)."""
    if not consumer.assignment():
        parts = consumer.partitions_for_topic(name) or {0}
        consumer.assign([TopicPartition(name, p) for p in parts])
        await consumer.seek_to_beginning()
    ends = await consumer.end_offsets(list(consumer.assignment())) if to_end else {}
    while True:
        batch = await consumer.getmany(timeout_ms=200 if to_end else 0)
        for messages in batch.values():
            for msg in messages:
                key = msg.key.decode()
                if not msg.value:
                    specs.pop(key, None)
                    continue
                try:
                    specs[key] = FilterSpec.from_json(msg.value)
                except FilterError as exc:
                    log.warning("filter %s ignored: %s", key, exc)
        if not to_end:
            return
        positions = [await consumer.position(tp) for tp in ends]
        if all(pos >= end for pos, end in zip(positions, ends.values())):
            return


class FilterStream:
    """Copy the alerts of ``{prefix}.alerts.{lane}`` that pass each filter to its topic."""

    def __init__(self, kafka: KafkaConfig, *, registry=None, client_options: dict | None = None,
                 lanes=LANES, metrics=None):
        self.kafka, self.registry, self.opts, self.lanes = kafka, registry, client_options or {}, tuple(lanes)
        self.specs: dict[str, FilterSpec] = {}
        self.metrics = metrics
        self.delivered: dict[str, int] = {}

    async def run(self, idle_timeout_s: float | None = None) -> dict[str, int]:
        """Until cancelled (or ``idle_timeout_s`` without an alert); returns alerts delivered per filter."""
        k = self.kafka
        await _ensure_filter_topics(k, [], self.opts)
        await ensure_topics(k.bootstrap, {topic(k.prefix, f"alerts.{lane}"): topic_config(k, f"alerts.{lane}")
                                          for lane in self.lanes}, k.partitions, k.replication, self.opts)
        filters = AIOKafkaConsumer(bootstrap_servers=k.bootstrap, enable_auto_commit=False, group_id=None, **self.opts)
        alerts = AIOKafkaConsumer(*(topic(k.prefix, f"alerts.{lane}") for lane in self.lanes),
                                  bootstrap_servers=k.bootstrap, group_id=f"{k.prefix}-filters",
                                  enable_auto_commit=False, auto_offset_reset="earliest",
                                  session_timeout_ms=int(k.session_timeout_s * 1000),
                                  heartbeat_interval_ms=int(k.heartbeat_s * 1000), **self.opts)
        producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap, linger_ms=0,
                                    max_request_size=k.max_message_bytes, **self.opts)
        for client in (filters, alerts, producer):
            await client.start()
        try:
            await _read_filters(filters, topic(k.prefix, "filters"), self.specs, to_end=True)
            await _ensure_filter_topics(k, self.specs.values(), self.opts)
            log.info("filter streams: %s", ", ".join(sorted(self.specs)) or "none yet")
            last = time.monotonic()
            while idle_timeout_s is None or time.monotonic() - last < idle_timeout_s:
                before = set(self.specs)
                await _read_filters(filters, topic(k.prefix, "filters"), self.specs, to_end=False)
                if set(self.specs) - before:
                    await _ensure_filter_topics(k, self.specs.values(), self.opts)
                batch = await alerts.getmany(timeout_ms=200)
                for messages in batch.values():
                    for msg in messages:
                        last = time.monotonic()
                        await self._route(producer, msg)
                if batch:
                    await alerts.commit()
        finally:
            for client in (filters, alerts, producer):
                await client.stop()
        return dict(self.delivered)

    async def _route(self, producer: AIOKafkaProducer, msg) -> None:
        lane = msg.topic.rsplit(".", 1)[1]
        try:
            v = view(decode(msg.value, registry=self.registry))
        except MalformedMessage as exc:
            log.warning("filters: skipped %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, exc)
            return
        for spec in list(self.specs.values()):
            if lane in spec.lanes and spec(v):
                await producer.send_and_wait(filter_topic(self.kafka.prefix, spec.name, lane), msg.value, key=msg.key)
                self.delivered[spec.name] = self.delivered.get(spec.name, 0) + 1
                if self.metrics is not None:
                    self.metrics.filtered(spec.name, lane)
