"""Consumer lag: per topic from the broker, and per stage from the database.

:func:`topic_lag` compares the pipeline group's committed offsets with the end offsets. On
the embedded Tansu broker end offsets are only right when every batch holds one record (our
producers send with ``linger_ms=0``), and a deferred message re-published to its own topic
counts twice; on Apache Kafka they are right. :func:`stage_backlog` needs no broker: each
exposure makes one event per stage and lane, so the backlog of a stage's input topic at
time t is what its source has emitted by t less what the stage has finished by t, both
known from the ``exposures``, ``stage_runs`` and ``dead_letters`` tables.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ast3stream.config import Settings
from agents.db import Database
from ast3stream.pipeline import LANES, SLOW, STAGES

from .security import kafka_options
from .topics import stage_topic, topic

#: the stage whose output each stage takes ("ingest": the exposure event); PSF photometry runs after photometry
SOURCES = {"reduction": "ingest", **{b.name: a.name for a, b in zip(STAGES, STAGES[1:])}, SLOW.name: "photometry"}


def consumed_topics(prefix: str) -> list[str]:
    """The topics the pipeline's agents read (the others are their outputs), handoffs between
    workers that run only some stages included."""
    return [topic(prefix, "exposures"), topic(prefix, "exposures.too"), topic(prefix, "gw"),
            *(stage_topic(prefix, s.name, lane) for s in STAGES[:-1] for lane in LANES)]


async def topic_lag(cfg: Settings) -> dict[str, int]:
    """Messages not yet committed by the pipeline's consumer group, per topic it consumes (all partitions)."""
    group = f"{cfg.kafka.prefix}-pipeline"
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap, **kafka_options(cfg.security))
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False,
                                **kafka_options(cfg.security))
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in consumed_topics(cfg.kafka.prefix) for p in range(cfg.kafka.partitions)]
        # with explicit partitions: Tansu drops the connection on a fetch of all the group's offsets
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        ends = await consumer.end_offsets(tps)
        lag: dict[str, int] = {}
        for tp in tps:
            done = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0
            lag[tp.topic] = lag.get(tp.topic, 0) + ends[tp] - done
        return lag
    finally:
        await consumer.stop()
        await admin.close()


def stage_backlog(db: Database, times: Sequence[float]) -> dict[tuple[str, str], np.ndarray]:
    """Events waiting for or in work at each stage and lane, at each of ``times`` (Unix s).

    An exposure event counts from when the watcher saw the file (``detected_at``; ToO exposures
    enter the QIP lane, the others the DIP lane), a stage's event from the end of its ``done``
    run; the QIP quality run of a ToO exposure also hands it to the DIP lane (see
    :class:`agents.chain.Chain`). A run counts as finished at its end, a dead letter at
    ``failed_at``; a deferred run is not finished.
    """
    times = np.asarray(times, float)
    exposures = db.rows("exposures")
    runs = [r for r in db.rows("stage_runs") if r["end"] is not None]
    done: dict[tuple[str, str], list[float]] = {}
    finished: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        finished.setdefault((r["stage"], r["lane"]), []).append(r["end"])
        if r["status"] == "done":
            done.setdefault((r["stage"], r["lane"]), []).append(r["end"])
    for d in db.rows("dead_letters"):
        lane = "qip" if d["source_topic"].endswith((".qip", ".exposures.too")) else "dip"
        finished.setdefault((d["stage"], lane), []).append(d["failed_at"])
    done[("ingest", "qip")] = [e["detected_at"] for e in exposures if e["too"]]
    done[("ingest", "dip")] = [e["detected_at"] for e in exposures if not e["too"]]
    done[("quality", "dip")] = done.get(("quality", "dip"), []) + done.get(("quality", "qip"), [])

    def upto(values: list[float]) -> np.ndarray:
        return np.searchsorted(np.sort(values), times, side="right")

    return {(s.name, lane): upto(done.get((SOURCES[s.name], lane), [])) - upto(finished.get((s.name, lane), []))
            for s in (*STAGES, SLOW) for lane in LANES}
