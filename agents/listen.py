"""Subscribe to alert topics: the ``ast3stream alerts listen`` client and its Python API.

``alerts(...)`` is an async iterator of decoded alert packets (needs only the light install); ``listen(...)`` applies an
:class:`~ast3stream.alerts.filters.AlertFilter` and prints a table, JSON lines, or writes
files (JSON + PNG cutouts). With a consumer group, offsets are committed so a restarted
listener resumes where it stopped; ``from_beginning`` starts at the earliest offset when
the group has none (always, without a group), as Kafka's console consumer does.
Messages that are not alerts are reported on stderr and skipped.
"""
from __future__ import annotations

import sys
import time
from contextlib import aclosing
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TextIO

from aiokafka import AIOKafkaConsumer

from ast3stream.alerts import decode
from ast3stream.alerts.output import table_header, table_row, to_json, write_files
from ast3stream.events import MalformedMessage
from ast3stream.paths import UnsafeName


async def alerts(bootstrap: str, topics: list[str], *, group: str | None = None, from_beginning: bool = False,
                 timeout_s: float | None = None, registry=None, **consumer_options) -> AsyncIterator[dict]:
    """Decoded alerts from ``topics`` until ``timeout_s`` seconds pass with no message (forever if None).

    Either framing (Confluent or one Avro container per message); Confluent schema ids that are
    not embedded ones are looked up in ``registry``. ``consumer_options`` go to aiokafka (e.g.
    :func:`agents.security.kafka_options` for SASL/TLS)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                enable_auto_commit=group is not None, **consumer_options)
    await consumer.start()
    try:
        last = time.monotonic()
        while timeout_s is None or time.monotonic() - last < timeout_s:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for msg in messages:
                    last = time.monotonic()
                    try:
                        yield decode(msg.value, registry=registry)
                    except MalformedMessage as exc:
                        print(f"skipped {msg.topic}[{msg.partition}]@{msg.offset}: {exc}", file=sys.stderr)
    finally:
        await consumer.stop()


async def listen(bootstrap: str, topics: list[str], *, alert_filter: Callable[[dict], bool] | None = None,
                 fmt: str = "table", out: str | Path = "alerts", max_alerts: int | None = None,
                 stream: TextIO = sys.stdout, **options) -> int:
    """Print (``table`` / ``json``) or write (``files`` under ``out``) the alerts that pass
    ``alert_filter``; stop after ``max_alerts`` or the idle ``timeout_s``. Returns the count shown."""
    if fmt not in ("table", "json", "files"):
        raise ValueError(f"unknown format {fmt!r}")
    if fmt == "table":
        print(table_header(), file=stream, flush=True)
    shown = 0
    if max_alerts == 0:
        return 0
    async with aclosing(alerts(bootstrap, topics, **options)) as stream_of_alerts:
        async for alert in stream_of_alerts:
            if alert_filter is not None and not alert_filter(alert):
                continue
            if fmt == "table":
                print(table_row(alert), file=stream, flush=True)
            elif fmt == "json":
                print(to_json(alert), file=stream, flush=True)
            else:
                try:
                    written = write_files(alert, out)
                except UnsafeName as exc:   # a foreign alert's objectId names the folder
                    print(f"skipped alert {alert.get('alertId')}: {exc}", file=sys.stderr)
                    continue
                print(written[0], file=stream, flush=True)
            shown += 1
            if max_alerts is not None and shown >= max_alerts:
                break
    return shown
