"""Each candidate and alert on each of its topics once, without Kafka transactions.

The embedded broker (Tansu) refuses idempotent producers and transactions, and no producer
can make "the broker has the message" and "the database recorded it" one step: a worker that
dies after the broker acknowledged a lane's first messages and before the database recorded
them would, on redelivery, send them again. So a worker claims the sending of an
(exposure, lane) first (:meth:`Database.claim_sends`: one row, its owner, a lease renewed
while it sends, ``done_at`` once all are out), then sends every candidate to ``candidates``
and every alert to its topics, then marks the claim done. A claim found unfinished was cut
off in between (a dead worker, or one whose lease ran out): :func:`topics_holding` reads
the lane's topics back once and only what is missing is sent. Reading back costs a pass
over those topics and happens only after such a crash.

The claim also fences a worker whose partition was revoked mid-chain (a rebalance): the
worker the exposure went to waits while the first one's lease runs, and does nothing once
it is done; a worker that finds its claim taken (its lease ran out) stops sending. The claim
is renewed by a heartbeat while a send waits for the broker, so a slow acknowledgement does
not let it lapse: the lease runs out only when the worker is dead or its event loop stalls for
longer than the lease. Still open in that last case: a message already in the stalled
worker's producer goes out when the loop runs again, after the next owner's read-back, so
twice (aiokafka drops a batch only after its request timeout, which faust sets far above the
lease).

Subscribers (as of ZTF's and Rubin's streams) may still deduplicate on ``alertId``, which is
deterministic (:func:`ast3stream.alerts.packet.alert_id`): a replay or a lost broker log
(the embedded broker in memory, killed with ``run``) publishes the same ids again.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping

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


async def topics_holding(kafka, security, names: list[str], wanted: Mapping[str, bytes], registry=None,
                         idle_s: float = 5.0, skew_s: float = 60.0) -> dict[str, set[str]]:
    """For each alert id of ``wanted`` (alert id -> message key), the topics among ``names``
    (without the prefix) that hold a message with that key and id: every partition is read
    from its beginning up to its first message stamped more than ``skew_s`` (the clocks of two
    hosts may differ) after this call began, or until ``idle_s`` of silence (Tansu's end
    offsets are not reliable on every storage)."""
    began_ms = time.time() * 1000
    wanted = {str(a): k for a, k in wanted.items()}
    found: dict[str, set[str]] = {a: set() for a in wanted}
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=kafka.max_message_bytes,
                                fetch_max_bytes=kafka.max_message_bytes, **kafka_options(security))
    await consumer.start()
    try:
        await consumer.topics()  # the partitions of every topic
        full = {topic(kafka.prefix, n): n for n in names}
        tps = [TopicPartition(t, p) for t in full for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps or not wanted:
            return found
        keys = set(wanted.values())
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        reading = set(tps)
        while reading and (batch := await consumer.getmany(*reading, timeout_ms=int(idle_s * 1000))):
            for tp, messages in batch.items():
                name = full[tp.topic]
                for m in messages:
                    if m.key in keys and (aid := alert_id_of(name, m.value, registry)) in found \
                            and wanted[aid] == m.key:
                        found[aid].add(name)
                    if m.timestamp > began_ms + skew_s * 1000:  # written since: the rest is too
                        reading.discard(tp)
                        break
        return found
    finally:
        await consumer.stop()
