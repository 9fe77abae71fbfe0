"""Stream events: Avro records exchanged between stages (schemas in ``ast3stream/schemas/events/``).

A Kafka message value is the Avro *schemaless* encoding of one record prefixed by a
3-byte frame ``b"A3" + <schema major version>``, so that a consumer can tell a message of
ours from garbage before decoding. The ``.avsc`` files are the contract. Decoding an event
also checks what the schema cannot: a plain exposure id, a raw path, finite times and
metrics; anything else raises :class:`MalformedMessage` with the reason.
"""
from __future__ import annotations

import hashlib
import io
import math
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import fastavro

from .paths import SAFE_NAME

SCHEMA_DIR = Path(str(files("ast3stream") / "schemas"))  #: package data: works from a wheel too
FRAME = b"A3\x01"
#: exposure ids name product folders and message keys (as :func:`ast3stream.rawfile.exposure_id` makes them)
SAFE_ID = SAFE_NAME


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
        why = re.sub(r"<[^>]* at 0x[0-9a-f]+>", "the message", str(exc))
        raise MalformedMessage(f"cannot decode {schema_name} event: {type(exc).__name__}: {why}") from exc
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
        return cls(**_checked(decode(data, "exposure"), "exposure"))


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
    handoff: bool = False
    schema_version: str = "1.0"

    @classmethod
    def from_exposure(cls, exp: ExposureEvent, lane: str) -> "StageEvent":
        return cls(exposure_id=exp.exposure_id, stage="ingest", stage_version="1", lane=lane,
                   raw_path=exp.path, file_closed_at=exp.file_closed_at, field_id=exp.field_id,
                   mjd=exp.mjd, too=exp.too, namespace=exp.namespace,
                   timings=[{"stage": "ingest", "lane": lane, "start": exp.file_closed_at, "end": exp.detected_at}])

    def product(self, name: str) -> str:
        """The path of an earlier stage's product; a clear error when the event lacks it."""
        try:
            return self.products[name]
        except KeyError:
            raise MalformedMessage(f"{self.stage} event of {self.exposure_id} has no {name!r} product "
                                   f"(has: {', '.join(sorted(self.products)) or 'none'})") from None

    def next(self, stage: str, version: str, start: float, lane: str | None = None) -> "StageEvent":
        """The event this stage emits: same exposure, one more version and timing entry."""
        lane = lane or self.lane
        versions = {**self.versions, stage: version}
        ev = StageEvent(**{**asdict(self), "stage": stage, "stage_version": version, "lane": lane,
                           "versions": versions, "handoff": False, "products": dict(self.products),
                           "metrics": dict(self.metrics), "flags": list(self.flags),
                           "timings": [*self.timings, {"stage": stage, "lane": lane, "start": start, "end": time.time()}]})
        ev.event_id = stage_event_id(self.exposure_id, lane, versions)
        return ev

    def encode(self) -> bytes:
        return encode(asdict(self), "stage")

    @classmethod
    def decode(cls, data: bytes) -> "StageEvent":
        return cls(**_checked(decode(data, "stage"), "stage"))


def _checked(record: dict, schema_name: str) -> dict:
    """A decoded exposure or stage event whose values the stages can trust, else :class:`MalformedMessage`."""
    def bad(why: str):
        return MalformedMessage(f"{schema_name} event {str(record.get('exposure_id'))[:80]!r}: {why}")

    if not SAFE_ID.fullmatch(record["exposure_id"]):
        raise bad("exposure_id is not a plain name of letters, digits and ._+:-")
    if record.get("field_id") is not None and not SAFE_ID.fullmatch(record["field_id"]):
        raise bad("field_id is not a plain name of letters, digits and ._+:-")
    if not record.get("raw_path", record.get("path")):
        raise bad("no raw file path")
    for key in ("file_closed_at", "detected_at", "mjd"):
        if record.get(key) is not None and not math.isfinite(record[key]):
            raise bad(f"{key} = {record[key]} is not finite")
    for name, value in record.get("metrics", {}).items():
        if not math.isfinite(value):
            raise bad(f"metric {name} = {value} is not finite")
    return record


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
