"""Alert packets: Avro schema, building, (de)serialising, cutouts, reading other surveys'
alerts, subscriber filters and output, GCN-style notices. No Kafka here (see ``agents.listen``)."""
from ast3stream.alerts.cutouts import make_cutout, read_cutout
from ast3stream.alerts.filters import AlertFilter
from ast3stream.alerts.packet import alert_id, build_alert, object_name
from ast3stream.alerts.reader import AlertView, read_alerts, view
from ast3stream.alerts.schema import load_schema, versions
from ast3stream.alerts.serialize import decode, encode, read_avro_file, write_avro_file

__all__ = ["AlertFilter", "AlertView", "alert_id", "build_alert", "decode", "encode", "load_schema",
           "make_cutout", "object_name", "read_alerts", "read_avro_file", "read_cutout", "versions",
           "view", "write_avro_file"]
