"""Topic names: one convention, ``{prefix}.{name}``.

=========================  ==============================================================
``{p}.exposures``          raw exposures from the watcher (normal survey: DIP lane)
``{p}.exposures.too``      priority exposures: fields on the ToO list (QIP lane first)
``{p}.{stage}.{lane}``     output of ``stage`` in lane ``qip`` or ``dip`` (see ``STAGES``)
``{p}.alerts``             every alert (Avro, key = object id)
``{p}.alerts.{lane}``      alerts of one lane
``{p}.gcn``                GCN-style optical-counterpart notices (JSON)
``{p}.gw``                 incoming gravitational-wave notices (LVK JSON / VOEvent)
``{p}.deadletter``         messages that could not be processed, with the reason
=========================  ==============================================================

A replay uses the prefix ``{p}.replay.{name}`` so it never touches live topics.
"""
from __future__ import annotations

from ast3stream.pipeline import LANES, STAGES


def topic(prefix: str, name: str) -> str:
    return f"{prefix}.{name}"


def stage_topic(prefix: str, stage: str, lane: str) -> str:
    return f"{prefix}.{stage}.{lane}"


def all_topics(prefix: str) -> list[str]:
    names = ["exposures", "exposures.too", "alerts", "gcn", "gw", "deadletter",
             *(f"alerts.{lane}" for lane in LANES),
             *(f"{s.name}.{lane}" for s in STAGES for lane in LANES)]
    return [topic(prefix, n) for n in names]
