"""Configuration that refuses mistakes, and CLI errors as one line saying what to fix."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from agents.broker import free_port
from ast3stream.cli import main
from ast3stream.config import ConfigError, Settings


@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    """``cli(*argv)`` -> (exit code, stderr, seconds, imports not counted); signal handlers that
    ``run`` installs are put back."""
    from ast3stream.cli import build_parser

    monkeypatch.delenv("AST3_CONFIG", raising=False)
    build_parser()  # imports the subcommands' modules
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def run(*argv):
        start = time.monotonic()
        try:
            code = main(["--data-dir", str(tmp_path / "data"), *argv])
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        return code, capsys.readouterr().err, time.monotonic() - start
    return run


@pytest.mark.parametrize("text, says", [
    ("[kafka]\nprefx = 'x'\n", "unknown setting 'kafka.prefx'; did you mean 'prefix'?"),
    ("[kafak]\nprefix = 'x'\n", "unknown setting 'kafak'; did you mean 'kafka'?"),
    ("[kafka]\npartitions = -3\n", "setting kafka.partitions: Input should be greater than or equal to 1"),
    ("[watcher]\npoll_s = 0\n", "setting watcher.poll_s: Input should be greater than 0"),
    ("[kafka\nprefix = 'x'\n", "Expected ']' at the end of a table declaration"),
])
def test_a_bad_settings_file_is_one_line_naming_the_problem(cli, tmp_path, text, says):
    path = tmp_path / "site.toml"
    path.write_text(text)
    code, err, seconds = cli("--config", str(path), "status")
    assert code == 2 and says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert seconds < 10


@pytest.mark.parametrize("name, says", [
    ("AST3_KAFKA__BOOTSTRP", "unknown setting 'kafka.bootstrp'; did you mean 'bootstrap'?"),
    ("AST3_KAFKA_BOOTSTRAP", "separated by a double underscore: AST3_KAFKA__BOOTSTRAP"),
    ("AST3_KAFFA__BOOTSTRAP", "unknown section 'kaffa'; did you mean 'kafka'?"),
])
def test_a_misspelled_environment_variable_is_an_error(monkeypatch, name, says):
    monkeypatch.setenv(name, "host:9092")
    with pytest.raises(ConfigError, match=says.replace("?", r"\?")):
        Settings.load(None)


def test_the_command_line_beats_the_environment_which_beats_the_file(monkeypatch, tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(f"[paths]\ndata_dir = '{tmp_path / 'file'}'\n[kafka]\nprefix = 'file'\n")
    monkeypatch.setenv("AST3_PATHS__DATA_DIR", str(tmp_path / "production"))
    monkeypatch.setenv("AST3_KAFKA__PREFIX", "env")
    cfg = Settings.load(path, paths={"data_dir": tmp_path / "test"})
    assert cfg.paths.data_dir == tmp_path / "test" and cfg.kafka.prefix == "env"
    assert Settings.load(path).paths.data_dir == tmp_path / "production"


@pytest.mark.broker
def test_an_unreachable_broker_or_database_is_one_line_within_seconds(cli, tmp_path):
    code, err, seconds = cli("run", "--bootstrap", f"127.0.0.1:{free_port()}")
    assert code == 2 and "broker unreachable" in err and err.count("\n") == 1, err
    assert seconds < 10
    path = tmp_path / "site.toml"
    path.write_text(f"[database]\nurl = 'postgresql+psycopg://ast3@127.0.0.1:{free_port()}/ast3'\n")
    pytest.importorskip("psycopg")
    code, err, seconds = cli("--config", str(path), "run")
    assert code == 2 and "database unreachable" in err and err.count("\n") == 1, err
    assert seconds < 10


def test_a_second_run_on_the_same_data_folder_refuses(cli, tmp_path):
    from agents.runner import lock_data_dir

    (tmp_path / "data").mkdir()
    held = lock_data_dir(tmp_path / "data" / "run.lock")
    try:
        code, err, seconds = cli("run")
    finally:
        held.close()
    assert code == 2 and "is in use by a running stack" in err and err.count("\n") == 1, err


def test_a_demo_starts_from_nothing_in_a_folder_of_its_own(cli, tmp_path):
    """The demo's folder is not the one ``run`` uses by default; a previous demo's state there
    (database, seen files, products) is removed, so a second demo does not count the same
    simulated exposures as done; a folder holding another run's files is refused in one line and
    left as it was."""
    from agents.demo import DEFAULT_FOLDER, DEMO_MARK, reset_folder

    assert Path(Settings().paths.data_dir).resolve() != DEFAULT_FOLDER.resolve()
    old = tmp_path / "demo"
    for name in ("ast3stream.db", "incoming/ast3_1001_0003.fits", "products/dip/x.fits"):
        (old / name).parent.mkdir(parents=True, exist_ok=True)
        (old / name).write_bytes(b"previous demo")
    (old / DEMO_MARK).write_text("")
    reset_folder(Settings(paths={"data_dir": old}))
    assert [p.name for p in old.iterdir()] == [DEMO_MARK]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ast3stream.db").write_bytes(b"a real night")
    code, err, _ = cli("demo")
    assert code == 2 and "not a previous demo's" in err and err.count("\n") == 1, err
    assert (tmp_path / "data" / "ast3stream.db").read_bytes() == b"a real night"
