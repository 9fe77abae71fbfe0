"""Each alert on each of its topics once, without Kafka transactions.

The embedded broker (Tansu) refuses idempotent producers and transactions, and no producer
can make "the broker has the alert" and "the database recorded it" one step: a worker that
dies after the broker acknowledged an alert and before :meth:`Database.record_alert` would,
on redelivery, send it again. So the chain records its intent first
(:meth:`Database.intend_alert`), sends, then records the alert. An alert whose intent is on
record but whose publication is not was cut off in between (the only way to get there):
:func:`topics_holding` reads its topics back and the chain sends it only where it is
missing. Reading back costs a pass over those topics, and happens only after such a crash.

Subscribers (as of ZTF's and Rubin's streams) may still deduplicate on ``alertId``, which is
deterministic (:func:`ast3stream.alerts.packet.alert_id`): a replay or a lost broker log
(the embedded broker in memory, killed with ``run``) publishes the same ids again.
"""
from __future__ import annotations

import json
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from ast3stream.alerts.serialize import read_message

from .security import kafka_options
from .topics import topic


def alert_id_of(name: str, value: bytes, registry=None) -> str | None:
    """The alert id a message of topic ``name`` (without the prefix) carries: an Avro alert,
    or for ``gcn`` the notice's target id; None for anything else."""
    try:
        if name == "gcn":
            return str(json.loads(value)["data"]["targets"][0]["id"])
        return str(read_message(value, registry=registry)[1]["alertId"])
    except Exception:  # a foreign or corrupt message is not ours
        return None


async def topics_holding(kafka, security, names: list[str], key: bytes, alert_id: str, registry=None,
                         idle_s: float = 5.0, skew_s: float = 60.0) -> set[str]:
    """The topics among ``names`` (without the prefix) that hold a message with ``key`` and
    ``alert_id``: every partition is read from its beginning up to its first message stamped
    more than ``skew_s`` (the clocks of two hosts may differ) after this call began, or until
    ``idle_s`` of silence (Tansu's end offsets are not reliable on every storage)."""
    began_ms = time.time() * 1000
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=kafka.max_message_bytes,
                                fetch_max_bytes=kafka.max_message_bytes, **kafka_options(security))
    await consumer.start()
    try:
        await consumer.topics()  # the partitions of every topic
        full = {topic(kafka.prefix, n): n for n in names}
        tps = [TopicPartition(t, p) for t in full for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return set()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: set[str] = set()
        reading = set(tps)
        while reading and (batch := await consumer.getmany(*reading, timeout_ms=int(idle_s * 1000))):
            for tp, messages in batch.items():
                name = full[tp.topic]
                for m in messages:
                    if m.key == key and alert_id_of(name, m.value, registry) == str(alert_id):
                        found.add(name)
                    if m.timestamp > began_ms + skew_s * 1000:  # written since: the rest is too
                        reading.discard(tp)
                        break
        return found
    finally:
        await consumer.stop()
