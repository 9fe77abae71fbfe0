"""Consumer lag per topic for the pipeline's consumer group.

Note: on the embedded Tansu broker end offsets are only right when every batch holds one
record (our producers send with ``linger_ms=0``); on Apache Kafka they are always right.
"""
from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ast3stream.config import Settings

from .topics import all_topics


async def topic_lag(cfg: Settings) -> dict[str, int]:
    group = f"{cfg.kafka.prefix}-pipeline"
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(t, 0) for t in all_topics(cfg.kafka.prefix)]
        ends = await consumer.end_offsets(tps)
        return {tp.topic: ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps}
    finally:
        await consumer.stop()
        await admin.close()
