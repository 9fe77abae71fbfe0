"""Stream events: Avro records exchanged between stages (schemas in ``schemas/events/``).

A Kafka message value is the Avro *schemaless* encoding of one record prefixed by a
3-byte frame ``b"A3" + <schema major version>``, so that a consumer can tell a message of
ours from garbage before decoding. The ``.avsc`` files are the contract.
"""
from __future__ import annotations

import hashlib
import io
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import fastavro

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
FRAME = b"A3\x01"


class MalformedMessage(ValueError):
    """A message that is not a valid framed Avro record of the expected schema."""


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    """Parse ``schemas/events/ast3stream.events.<name>.avsc``."""
    path = SCHEMA_DIR / "events" / f"ast3stream.events.{name}.avsc"
    return fastavro.parse_schema(fastavro.schema.load_schema(str(path)))


def encode(record: dict, schema_name: str) -> bytes:
    buf = io.BytesIO()
    buf.write(FRAME)
    fastavro.schemaless_writer(buf, load_schema(schema_name), record)
    return buf.getvalue()


def decode(data: bytes | None, schema_name: str) -> dict:
    if not data or not data.startswith(FRAME):
        raise MalformedMessage(f"not an ast3stream {schema_name} event: bad frame header {data[:3]!r}" if data else "empty message")
    try:
        buf = io.BytesIO(data[len(FRAME):])
        record = fastavro.schemaless_reader(buf, load_schema(schema_name), None)
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise MalformedMessage(f"cannot decode {schema_name} event: {type(exc).__name__}: {exc}") from exc
    if buf.tell() != len(data) - len(FRAME):
        raise MalformedMessage(f"cannot decode {schema_name} event: {len(data) - len(FRAME) - buf.tell()} trailing bytes")
    return record


@dataclass
class ExposureEvent:
    exposure_id: str
    path: str
    sha256: str
    size: int
    file_closed_at: float
    detected_at: float
    field_id: str | None = None
    mjd: float | None = None
    too: bool = False
    namespace: str = ""
    schema_version: str = "1.0"

    def encode(self) -> bytes:
        return encode(asdict(self), "exposure")

    @classmethod
    def decode(cls, data: bytes) -> "ExposureEvent":
        return cls(**decode(data, "exposure"))


@dataclass
class StageEvent:
    exposure_id: str
    stage: str
    stage_version: str
    lane: str
    raw_path: str
    file_closed_at: float
    field_id: str | None = None
    mjd: float | None = None
    too: bool = False
    products: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    timings: list[dict] = field(default_factory=list)
    namespace: str = ""
    event_id: str = ""
    schema_version: str = "1.0"

    @classmethod
    def from_exposure(cls, exp: ExposureEvent, lane: str) -> "StageEvent":
        return cls(exposure_id=exp.exposure_id, stage="ingest", stage_version="1", lane=lane,
                   raw_path=exp.path, file_closed_at=exp.file_closed_at, field_id=exp.field_id,
                   mjd=exp.mjd, too=exp.too, namespace=exp.namespace,
                   timings=[{"stage": "ingest", "lane": lane, "start": exp.file_closed_at, "end": exp.detected_at}])

    def next(self, stage: str, version: str, start: float, lane: str | None = None) -> "StageEvent":
        """The event this stage emits: same exposure, one more version and timing entry."""
        lane = lane or self.lane
        versions = {**self.versions, stage: version}
        ev = StageEvent(**{**asdict(self), "stage": stage, "stage_version": version, "lane": lane,
                           "versions": versions, "products": dict(self.products),
                           "metrics": dict(self.metrics), "flags": list(self.flags),
                           "timings": [*self.timings, {"stage": stage, "lane": lane, "start": start, "end": time.time()}]})
        ev.event_id = stage_event_id(self.exposure_id, lane, versions)
        return ev

    def encode(self) -> bytes:
        return encode(asdict(self), "stage")

    @classmethod
    def decode(cls, data: bytes) -> "StageEvent":
        return cls(**decode(data, "stage"))


def stage_event_id(exposure_id: str, lane: str, versions: dict[str, str]) -> str:
    """Deterministic id: the same inputs through the same stage versions give the same id.

    The namespace is deliberately not part of it, so a replay can be diffed against live.
    """
    text = "|".join([exposure_id, lane, *(f"{k}={versions[k]}" for k in sorted(versions))])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def deadletter(source_topic: str, stage: str, reason: str, error_type: str, *, key: bytes | None,
               value: bytes | None, partition: int = -1, offset: int = -1,
               exposure_id: str | None = None, traceback: str = "") -> bytes:
    return encode({"schema_version": "1.0", "source_topic": source_topic, "source_partition": partition,
                   "source_offset": offset, "stage": stage, "exposure_id": exposure_id,
                   "reason": reason, "error_type": error_type, "traceback": traceback,
                   "failed_at": time.time(), "key": key, "value": value}, "deadletter")
