"""Alerts as bytes: Kafka messages in either framing, and Avro container files.

Two framings, chosen per topic (:class:`AlertWire`):

``confluent`` (Confluent wire format, as Rubin's alert stream)::

    byte 0      0x00 (magic)
    bytes 1-4   schema id, big-endian uint32: the schema registry's id of the writer schema,
                or without a registry the embedded id 100 * major + minor (200 for 2.0)
    bytes 5-    the alert, Avro binary encoding without schema (schemaless)

``container`` (ZTF's convention): each message is a whole Avro object container file with
the writer schema in its header, so plain ``fastavro.reader(io.BytesIO(value))`` reads it.

Files: an Avro object container, like ZTF's alert files. :func:`decode` reads either framing.
"""
from __future__ import annotations

import io
import logging
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import fastavro

from ast3stream.alerts.schema import load_schema, raw_schema, schema_id, version_of, versions
from ast3stream.events import MalformedMessage

log = logging.getLogger("ast3stream.alerts")
MAGIC = b"\x00"
CONTAINER_MAGIC = b"Obj\x01"
HEADER = struct.Struct(">cI")
FRAMINGS = ("confluent", "container")


def encode(alert: dict, *, framing: str = "confluent", schema_id_: int | None = None) -> bytes:
    """Kafka message value of ``alert`` in its own schema version (``alert['schemavsn']``);
    ``schema_id_``: the registry's id of that schema (default: the embedded id)."""
    version = alert.get("schemavsn") or versions()[-1]
    buf = io.BytesIO()
    if framing == "container":
        fastavro.writer(buf, load_schema(version), [alert])
    elif framing == "confluent":
        buf.write(HEADER.pack(MAGIC, schema_id(version) if schema_id_ is None else schema_id_))
        fastavro.schemaless_writer(buf, load_schema(version), alert)
    else:
        raise ValueError(f"unknown alert framing {framing!r}; use one of {FRAMINGS}")
    return buf.getvalue()


def read_message(data: bytes, *, registry=None, schemas: Mapping[int, dict] | None = None) -> tuple[dict, dict]:
    """(writer schema, record) of any Avro alert message, ours or another survey's: a container
    (schema in the header), or Confluent framing whose id is looked up in ``schemas`` (a local
    store: id -> schema), then ``registry`` (:class:`~ast3stream.alerts.registry.SchemaRegistry`),
    then our embedded ids. Raises :class:`MalformedMessage` with the reason."""
    data = bytes(data or b"")
    try:
        if data.startswith(CONTAINER_MAGIC):
            reader = fastavro.reader(io.BytesIO(data))
            records = list(reader)
            if len(records) != 1:
                raise MalformedMessage(f"an alert message holds one record, this container holds {len(records)}")
            return reader.writer_schema, records[0]
    except MalformedMessage:
        raise
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise MalformedMessage(f"cannot decode alert container: {type(exc).__name__}: {exc}") from exc
    if len(data) < HEADER.size or data[:1] != MAGIC:
        raise MalformedMessage(f"not an alert message: bad frame {data[:HEADER.size]!r}")
    sid = HEADER.unpack_from(data)[1]
    writer = _writer_schema(sid, registry, schemas)
    buf = io.BytesIO(data[HEADER.size:])
    try:
        record = fastavro.schemaless_reader(buf, writer, None)
    except Exception as exc:
        raise MalformedMessage(f"cannot decode alert (schema id {sid}): {type(exc).__name__}: {exc}") from exc
    if buf.tell() != len(data) - HEADER.size:
        raise MalformedMessage(f"cannot decode alert (schema id {sid}): {len(data) - HEADER.size - buf.tell()} trailing bytes")
    return writer, record


def decode(data: bytes, reader_version: str | None = None, *, registry=None) -> dict:
    """Our alert in a Kafka message of either framing, resolved to ``reader_version`` (default:
    the newest version we have of the writer's major version).

    Raises :class:`ast3stream.events.MalformedMessage` for anything that is not one of our alerts.
    """
    writer, record = read_message(data, registry=registry)
    name = str(writer.get("name", ""))
    major = name.split(".")[1][1:] if name.startswith("ast3stream.v") else None
    same_major = [v for v in versions() if v.split(".")[0] == major]
    if not same_major:
        raise MalformedMessage(f"not an ast3stream alert of a known major version: writer schema {name or '?'} "
                               f"(version {writer.get('version', '?')}); have {versions()}")
    reader_version = reader_version or same_major[-1]
    if writer.get("version") == reader_version:
        return record
    try:  # resolve the writer's record to our reader schema (a newer or older minor version)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), record)
        buf.seek(0)
        return fastavro.schemaless_reader(buf, fastavro.parse_schema(writer), load_schema(reader_version))
    except Exception as exc:
        raise MalformedMessage(f"alert schema {writer.get('version')} does not resolve to {reader_version}: {exc}") from exc


def _writer_schema(sid: int, registry, schemas: Mapping[int, dict] | None) -> dict:
    if schemas and sid in schemas:
        return fastavro.parse_schema(schemas[sid])
    if registry is not None:
        from ast3stream.alerts.registry import RegistryError

        try:
            return fastavro.parse_schema(registry.schema(sid))
        except RegistryError as exc:
            raise MalformedMessage(f"schema id {sid}: {exc}") from None
    if version_of(sid) in versions():
        return load_schema(version_of(sid))
    raise MalformedMessage(f"alert written with schema id {sid}, which is not an embedded ast3stream id "
                           f"({', '.join(str(schema_id(v)) for v in versions())}) and no registry or schema store was given")


class AlertWire:
    """How alerts go on each topic: the framing (``framing``, or ``topic_framing[name]`` for a
    topic name without the prefix) and, with a ``registry``, the registry's schema id, registered
    under ``<prefix>.<name>-value`` on first use. Without a registry the embedded ids are used
    (logged once)."""

    def __init__(self, prefix: str, framing: str = "confluent", topic_framing: Mapping[str, str] | None = None,
                 registry=None):
        for f in (framing, *(topic_framing or {}).values()):
            if f not in FRAMINGS:
                raise ValueError(f"unknown alert framing {f!r}; use one of {FRAMINGS}")
        self.prefix, self.framing, self.topic_framing = prefix, framing, dict(topic_framing or {})
        self.registry = registry
        self._ids: dict[tuple[str, str], int] = {}

    def framing_of(self, name: str) -> str:
        return self.topic_framing.get(name, self.framing)

    def schema_id(self, name: str, version: str) -> int:
        """The id that messages of ``version`` carry on topic ``name`` (registering it if needed)."""
        key = (name, version)
        if key not in self._ids:
            if self.registry is None:
                self._ids[key] = schema_id(version)
                log.info("alert schema %s on %s.%s: embedded id %d (no registry)", version, self.prefix, name,
                         self._ids[key])
            else:
                from ast3stream.alerts.registry import subject

                self._ids[key] = self.registry.register(subject(f"{self.prefix}.{name}"), raw_schema(version))
                log.info("alert schema %s on %s.%s: registry id %d", version, self.prefix, name, self._ids[key])
        return self._ids[key]

    def encode(self, alert: dict, name: str) -> bytes:
        """``alert`` as a message of topic ``name`` (without the prefix)."""
        framing = self.framing_of(name)
        if framing == "container":
            return encode(alert, framing="container")
        return encode(alert, schema_id_=self.schema_id(name, alert.get("schemavsn") or versions()[-1]))


def write_avro_file(alerts: Iterable[dict], path: str | Path, codec: str = "null") -> Path:
    """Write alerts to one Avro container file (writer schema = the first alert's version)."""
    alerts = list(alerts)
    version = (alerts[0].get("schemavsn") if alerts else None) or versions()[-1]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fastavro.writer(fh, load_schema(version), alerts, codec=codec)
    return path


def read_avro_file(path: str | Path) -> list[dict]:
    """Every record of an Avro container file, read with its own writer schema."""
    with open(path, "rb") as fh:
        return list(fastavro.reader(fh))
