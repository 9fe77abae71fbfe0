"""Operator actions of the portal (they need ``portal.token``): re-publish a dead letter's
original message, set or rebuild a field's template."""
from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaProducer

from agents.chain import Resources
from agents.demo import read_topic
from agents.templates import set_template
from agents.topics import topic
from agents.watcher import Watcher
from ast3stream.events import decode
from ast3stream.rawfile import BadHeader, IncompleteFile

from .data import NotFound


class ActionFailed(RuntimeError):
    """The action cannot be done now; the message says why (the portal answers 409)."""


SHOWN = ("source_partition", "source_offset", "error_type")  #: dead-letter message fields the portal lists


async def original(kafka, row: dict, seen: dict) -> dict | None:
    """The dead-letter message of a ``dead_letters`` row: the latest one with its topic, stage,
    exposure and reason (the original key and value, topic partition and offset, error type).

    ``seen`` caches the topic's messages by offset between calls; only newer ones are read.
    """
    async def read() -> None:
        for m in await read_topic(kafka.bootstrap, topic(kafka.prefix, "deadletter"), timeout=0.5):
            seen[(m.partition, m.offset)] = decode(m.value, "deadletter")

    def match():
        return next((d for _, d in sorted(seen.items(), reverse=True)
                     if (d["source_topic"], d["stage"], d["exposure_id"], d["reason"])
                     == (row["source_topic"], row["stage"], row["exposure_id"], row["reason"])), None)

    found = match()
    if found is None:
        await read()
        found = match()
    return found


async def retry(res: Resources, row: dict, seen: dict) -> dict:
    """Re-publish a dead letter's original message to its topic. A file the watcher could
    not take is looked at again: published as an exposure event when it is now complete
    and readable, else :class:`ActionFailed` with the reason."""
    kafka = res.cfg.kafka
    if not kafka.bootstrap:
        raise ActionFailed("retry needs the broker: start the portal with --bootstrap (or kafka.bootstrap)")
    d = await original(kafka, row, seen)
    if d is None:
        raise NotFound(f"dead letter {row['id']} is not on {topic(kafka.prefix, 'deadletter')} any more (retention?)")
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=0,
                                max_request_size=kafka.max_message_bytes)
    await producer.start()
    try:
        if row["source_topic"] == "watcher":
            path = Path(d["value"].decode())
            if not path.is_file():
                raise ActionFailed(f"{path} is not there any more")
            watcher = Watcher(path.parent, res, producer, kafka.prefix)
            try:
                await watcher._publish(path, path.stat().st_mtime)
            except (IncompleteFile, BadHeader, OSError) as exc:
                raise ActionFailed(f"{path.name} still cannot be taken: {exc}") from exc
            ids = [r for r in res.db.rows("exposures") if Path(r["path"]) == path.resolve()]
            if not ids:
                raise ActionFailed(f"{path.name}: an exposure with this content or id is already known")
            return {"republished": f"exposure event of {path.name}", "exposure_id": ids[0]["exposure_id"],
                    "topic": topic(kafka.prefix, "exposures.too" if ids[0]["too"] else "exposures")}
        meta = await producer.send_and_wait(row["source_topic"], d["value"], key=d["key"])
        return {"republished": f"original message of {row['source_topic']}", "topic": row["source_topic"],
                "partition": meta.partition, "offset": meta.offset}
    finally:
        await producer.stop()


async def template_set(res: Resources, field_id: str, exposure_id: str) -> dict:
    """Make ``exposure_id`` the template of ``field_id`` (both lanes)."""
    rows = res.db.rows("exposures", exposure_id=exposure_id)
    if not rows:
        raise NotFound(f"no exposure {exposure_id!r}")
    if rows[0]["field_id"] != field_id:
        raise ActionFailed(f"exposure {exposure_id} is of field {rows[0]['field_id']}, not {field_id}")
    try:
        row = await asyncio.to_thread(set_template, res, exposure_id)
    except (OSError, ValueError) as exc:
        raise ActionFailed(f"template of {field_id} from {exposure_id} failed: {exc}") from exc
    return {k: row[k] for k in ("field_id", "lane", "exposure_id", "maglim", "pcc", "fwhm_px")}


async def template_rebuild(res: Resources, field_id: str) -> dict:
    """Build the field's template again from the exposure it is made of."""
    row = res.db.template(field_id, "dip")
    if row is None:
        raise NotFound(f"no template for field {field_id!r}")
    return await template_set(res, field_id, row["exposure_id"])
