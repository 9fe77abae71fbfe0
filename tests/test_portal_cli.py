"""``ast3stream portal`` serves the portal over a data folder and prints its URL."""
import socket
import subprocess
import sys
import urllib.request


def test_portal_command_serves_a_data_folder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ast3stream.cli", "--data-dir", str(tmp_path), "portal",
                             "--port", "0", "--namespace", "replay_rb2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("portal http://127.0.0.1:") and "read-only" in line, line
        url = line.split()[1]
        with urllib.request.urlopen(url + "api/night", timeout=30) as r:
            assert r.status == 200 and b'"exposures":[]' in r.read()
        with urllib.request.urlopen(url, timeout=30) as r:
            assert b"replay_rb2" in r.read()  # the namespace it shows
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (tmp_path / "ast3stream.db").exists()


def test_portal_command_says_when_the_port_is_taken(tmp_path, capsys):
    from ast3stream.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["--data-dir", str(tmp_path), "portal", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_stack_serves_it_beside_itself_unless_the_port_is_taken(tmp_path, caplog):
    from agents.portal import in_background
    from ast3stream.config import Settings

    cfg = Settings.load(None, paths={"data_dir": tmp_path}, portal={"port": 0})
    with in_background(cfg) as url:
        with urllib.request.urlopen(url + "api/deadletters", timeout=30) as r:
            assert r.status == 200
        cfg.portal.port = int(url.rsplit(":", 1)[1].strip("/"))
        with in_background(cfg) as second:  # the port is taken: the stack goes on without a portal
            assert second is None
    assert "portal not started" in caplog.text
    cfg.portal.enabled = False
    with in_background(cfg) as off:
        assert off is None
