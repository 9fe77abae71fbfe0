"""Alert packets: Avro schema, building, (de)serialising, cutouts, reading other surveys'
alerts, subscriber filters and output, GCN-style notices. No Kafka here (see ``agents.listen``).

Names are imported on first use, so a light install (fastavro only, no ``[pipeline]`` extra)
can ``from ast3stream.alerts import decode, view`` without numpy or astropy.
"""
from importlib import import_module

_WHERE = {"AlertFilter": "filters", "AlertView": "reader", "read_alerts": "reader", "view": "reader",
          "alert_id": "packet", "build_alert": "packet", "object_name": "packet", "packet_digest": "packet",
          "make_cutout": "cutouts", "read_cutout": "cutouts", "load_schema": "schema", "versions": "schema",
          "decode": "serialize", "encode": "serialize", "read_avro_file": "serialize",
          "write_avro_file": "serialize"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'ast3stream.alerts' has no attribute {name!r}")
    value = getattr(import_module(f"ast3stream.alerts.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
