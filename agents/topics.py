"""Topic names: one convention, ``{prefix}.{name}``.

=========================  ==============================================================
``{p}.exposures``          raw exposures from the watcher (normal survey: DIP lane)
``{p}.exposures.too``      priority exposures: fields on the ToO list (QIP lane first)
``{p}.{stage}.{lane}``     output of ``stage`` in lane ``qip`` or ``dip`` (see ``STAGES``)
``{p}.candidates``         every candidate with its real/bogus score, alert or not (Avro, key = object id)
``{p}.alerts``             every alert: candidates above the threshold (Avro, key = object id)
``{p}.alerts.{lane}``      alerts of one lane
``{p}.gcn``                GCN-style optical-counterpart notices (JSON)
``{p}.gw``                 incoming gravitational-wave notices (LVK JSON / VOEvent)
``{p}.deadletter``         messages that could not be processed, with the reason
``{p}.filters``            the filter streams' definitions (compacted; key = filter name, JSON)
``{p}.filter.{name}.{l}``  alerts of lane ``l`` that pass filter ``name`` (see ``agents.filterstream``)
=========================  ==============================================================

A replay uses the prefix ``{p}.replay.{name}`` so it never touches live topics.
Every topic is created explicitly (:func:`agents.broker.ensure_topics`) with the topic
configs of :func:`topic_configs`: retention by kind (``kafka.*retention_days``) and the
largest message size.
"""
from __future__ import annotations

from ast3stream.config import KafkaConfig

DAY_MS = 86_400_000


def topic(prefix: str, name: str) -> str:
    return f"{prefix}.{name}"


def stage_topic(prefix: str, stage: str, lane: str) -> str:
    return f"{prefix}.{stage}.{lane}"


def topic_names() -> list[str]:
    """Every topic of a deployment, without the prefix."""
    from ast3stream.pipeline import LANES, STAGES   # the pipeline's stages (not needed by a light client)

    return ["exposures", "exposures.too", "candidates", "alerts", "gcn", "gw", "deadletter", "filters",
            *(f"alerts.{lane}" for lane in LANES),
            *(f"{s.name}.{lane}" for s in STAGES for lane in LANES)]


def all_topics(prefix: str) -> list[str]:
    return [topic(prefix, n) for n in topic_names()]


def retention_days(kafka: KafkaConfig, name: str) -> float:
    """How long topic ``name`` (without the prefix) keeps its messages."""
    if name.startswith("exposures"):
        return kafka.exposures_retention_days
    if name.startswith(("alerts", "filter.")) or name in ("candidates", "gcn", "gw"):
        return kafka.alerts_retention_days
    if name in ("deadletter", "filters"):
        return kafka.deadletter_retention_days
    return kafka.retention_days


def topic_config(kafka: KafkaConfig, name: str) -> dict[str, str]:
    """The topic configs of topic ``name`` (without the prefix): retention, message size,
    compaction for ``filters`` (the latest definition of each filter is kept)."""
    config = {"retention.ms": str(round(retention_days(kafka, name) * DAY_MS)),
              "max.message.bytes": str(kafka.max_message_bytes)}
    if name == "filters":
        config["cleanup.policy"] = "compact"
    return config


def filter_topic(prefix: str, name: str, lane: str) -> str:
    return f"{prefix}.filter.{name}.{lane}"


def topic_configs(kafka: KafkaConfig) -> dict[str, dict[str, str]]:
    """Every topic of the deployment ``kafka.prefix`` with its topic configs (``retention.ms``...)."""
    return {topic(kafka.prefix, name): topic_config(kafka, name) for name in topic_names()}
