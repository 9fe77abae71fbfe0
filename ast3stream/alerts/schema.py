"""The alert schema: versioned Avro files in ``schemas/alert/<major>.<minor>/``.

The record namespace carries the major version only (``ast3stream.v2``): a minor version
adds fields with defaults, so Avro schema resolution lets any 2.x reader read any 2.x
writer. Without a schema registry each version has the embedded id ``100 * major + minor`` (Rubin's
convention), used in the Confluent frame (:mod:`ast3stream.alerts.serialize`); with one, the
registry's id.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import fastavro
import fastavro.schema

from ast3stream.events import SCHEMA_DIR as SCHEMAS

SCHEMA_DIR = SCHEMAS / "alert"


def versions() -> list[str]:
    """Schema versions shipped, oldest first."""
    found = [p.name for p in SCHEMA_DIR.iterdir() if p.is_dir() and (p / f"ast3stream.v{p.name.split('.')[0]}.alert.avsc").exists()]
    return sorted(found, key=lambda v: tuple(int(n) for n in v.split(".")))


def schema_path(version: str) -> Path:
    """The top-level ``.avsc`` of ``version``; fastavro finds the named types beside it."""
    major = version.split(".")[0]
    return SCHEMA_DIR / version / f"ast3stream.v{major}.alert.avsc"


@lru_cache(maxsize=None)
def load_schema(version: str | None = None) -> dict:
    """The parsed alert schema of ``version`` (default: the newest)."""
    version = version or versions()[-1]
    path = schema_path(version)
    if not path.exists():
        raise ValueError(f"no alert schema version {version!r}; have {versions()}")
    return fastavro.parse_schema(fastavro.schema.load_schema(str(path)))


@lru_cache(maxsize=None)
def raw_schema(version: str) -> dict:
    """The whole schema of ``version`` as one JSON document (named types inlined): what is
    registered in a schema registry."""
    return fastavro.schema.load_schema(str(schema_path(version)), _write_hint=False)


def schema_id(version: str) -> int:
    """The embedded id of ``version`` (used when no registry is configured): ``100 * major + minor``."""
    major, minor = (int(n) for n in version.split("."))
    return 100 * major + minor


def version_of(schema_id_: int) -> str:
    return f"{schema_id_ // 100}.{schema_id_ % 100}"
