"""Alerts as bytes: Kafka messages and Avro container files.

Kafka message (Confluent wire format, as Rubin's alert stream)::

    byte 0      0x00 (magic)
    bytes 1-4   schema id, big-endian uint32 = 100 * major + minor of the writer schema
    bytes 5-    the alert, Avro binary encoding without schema (schemaless)

Files: an Avro object container with the writer schema in its header, like ZTF's alert
files, so plain ``fastavro.reader`` (or any Avro library) reads them with nothing else.
"""
from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from pathlib import Path

import fastavro

from ast3stream.alerts.schema import load_schema, schema_id, version_of, versions
from ast3stream.events import MalformedMessage

MAGIC = b"\x00"
HEADER = struct.Struct(">cI")


def encode(alert: dict) -> bytes:
    """Kafka message value of ``alert`` in its own schema version (``alert['schemavsn']``)."""
    version = alert.get("schemavsn") or versions()[-1]
    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC, schema_id(version)))
    fastavro.schemaless_writer(buf, load_schema(version), alert)
    return buf.getvalue()


def decode(data: bytes, reader_version: str | None = None) -> dict:
    """The alert in a Kafka message, resolved to ``reader_version`` (default: newest known).

    Raises :class:`ast3stream.events.MalformedMessage` for anything that is not a framed alert.
    """
    if not data or len(data) < HEADER.size or data[:1] != MAGIC:
        raise MalformedMessage(f"not an ast3stream alert: bad frame {bytes(data[:HEADER.size])!r}")
    writer = version_of(HEADER.unpack_from(data)[1])
    if writer not in versions():
        raise MalformedMessage(f"alert written with unknown schema version {writer}")
    reader_version = reader_version or versions()[-1]
    buf = io.BytesIO(data[HEADER.size:])
    try:
        alert = fastavro.schemaless_reader(buf, load_schema(writer), load_schema(reader_version))
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise MalformedMessage(f"cannot decode alert: {type(exc).__name__}: {exc}") from exc
    if buf.tell() != len(data) - HEADER.size:
        raise MalformedMessage(f"cannot decode alert: {len(data) - HEADER.size - buf.tell()} trailing bytes")
    return alert


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
