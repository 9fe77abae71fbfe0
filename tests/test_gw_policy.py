"""The GW notice policy on real notices, and what ingesting does to the database: a redelivered
notice is one row, an older notice does not undo a newer one, a notice without its map keeps the
list, lists expire, a hand-given notice is followed with the policy's verdict kept."""
from __future__ import annotations

import json
import re

import pytest

from agents.db import Database
from agents.gw import GWState, ingest
from ast3stream.config import GWConfig, Settings
from ast3stream.gw import judge, make_grid, read_notice
from ast3stream.gw.too import field_size


@pytest.fixture(scope="module")
def notices(shared_data):
    sky = shared_data / "gw" / "skyportal"
    return dict(
        s240116o=read_notice(shared_data / "gw" / "lvk" / "S240116o-preliminary_fink-modified-times.json"),
        mock=read_notice(sky / "igwn_gwalert_preliminary.json"),
        mock_retraction=read_notice(sky / "igwn_gwalert_retraction.json"),
        gw190425=read_notice((sky / "GW190425_initial.xml").read_bytes()),     # no map looked up
        gw190814=read_notice((sky / "GW190814.xml").read_bytes()))         # an UPDATE


def test_policy_on_real_notices(notices):
    gw = GWConfig()
    verdicts = {k: judge(n, gw) for k, n in notices.items()}
    assert verdicts["s240116o"] == (False, "not significant (FAR 66.2 per year)")
    assert verdicts["mock"].reason == "MS260605l is a mock event (only followed in test mode)"
    assert not verdicts["mock_retraction"].follow
    assert verdicts["gw190425"] == (True, "followed (FAR 1.43e-05 per year)")
    assert verdicts["gw190814"].follow
    assert judge(notices["mock"], GWConfig(test_mode=True)).follow
    assert judge(notices["mock_retraction"], GWConfig(test_mode=True)) == (True, "retraction")
    # a team following low-significance alerts, with its own FAR and p(Terrestrial) cuts
    low = GWConfig(require_significant=False)
    assert judge(notices["s240116o"], low).follow
    assert judge(notices["s240116o"], GWConfig(require_significant=False, max_far_per_year=12)).reason == \
        "FAR 66.2 per year is above gw.max_far_per_year = 12"
    assert judge(notices["s240116o"], GWConfig(require_significant=False, max_terrestrial=0.5)).reason == \
        "p(Terrestrial) = 0.808 is above gw.max_terrestrial = 0.5"
    assert judge(notices["gw190425"], GWConfig(groups=("Burst",))).reason == \
        "group CBC is not followed (gw.groups = ['Burst'])"
    early = read_notice(json.dumps({"superevent_id": "S250101a", "alert_type": "EARLY_WARNING".replace("_", ""),
                                    "event": {"significant": True, "group": "CBC"}}).encode())
    assert judge(early, gw).follow and judge(early, GWConfig(early_warning=False)).reason == \
        "early-warning notices are not followed (gw.early_warning = false)"


def test_ingest_redelivery_order_missing_map_and_expiry(shared_data, tmp_path):
    sky = shared_data / "gw" / "skyportal"
    cfg = Settings.load(None, paths={"data_dir": tmp_path / "run"}, gw={"skymap_dir": str(sky), "max_fields": 10})
    db = Database.from_settings(cfg)
    state = GWState(db)
    w, h = field_size(cfg.detector, cfg.gw)
    grid = make_grid(w, h, -30, 60)
    grid["field_id"] = [str(f) for f in grid["field_id"]]
    update = (sky / "GW190425_initial.xml").read_bytes().replace(b'value="Initial"', b'value="Update"')
    out = ingest(update, db, cfg, origin="test", fields=grid, now=1000.0)
    assert out.action == "fields" and len(out.fields) == 10
    # GW190425's BAYESTAR map is 10,000 deg^2 wide: ten AST3-3 fields hold little of it
    assert 0.005 < out.fields["cum_prob"][-1] < 0.05 and out.fields["prob"][0] < 0.005
    first = [r["field_id"] for r in db.too_fields()]
    assert ingest(update, db, cfg, origin="again", fields=grid, now=1001.0).action == "fields"   # redelivered
    assert len(state.notices()) == 1 and state.event("S190425z")["n_notices"] == 1
    older = re.sub(rb"<Date>[^<]*</Date>", b"<Date>2019-04-25T08:30:00</Date>", update)   # before the UPDATE's
    assert ingest(older, db, cfg, fields=grid, now=1002.0).action == "superseded"
    assert [r["field_id"] for r in db.too_fields()] == first
    nomap = update.replace(b"bayestar.fits.gz", b"not_here.fits.gz")
    assert ingest(nomap, db, cfg, fields=grid, now=1003.0).action == "no skymap"
    assert [r["field_id"] for r in db.too_fields()] == first                       # the list stays
    ev = state.event("S190425z")
    assert ev["status"] == "active" and ev["area90_deg2"] == pytest.approx(10183, rel=2e-3)
    assert ev["expires_at"] == pytest.approx(1003.0 + 72 * 3600)
    assert state.expire(now=1003.0 + 72 * 3600 - 1) == [] and db.too_fields()
    assert state.expire(now=1003.0 + 72 * 3600 + 1) == ["S190425z"]
    assert db.too_fields() == [] and state.event("S190425z")["status"] == "expired"


def test_ignored_by_policy_unless_given_by_hand(shared_data, tmp_path, capsys):
    from ast3stream.cli import main

    cfg = Settings.load(None, paths={"data_dir": tmp_path / "run"})
    db = Database.from_settings(cfg)
    mock = shared_data / "gw" / "skyportal" / "igwn_gwalert_preliminary.json"
    out = ingest(mock, db, cfg)
    assert out.action == "ignored" and db.too_fields() == []
    assert GWState(db).event("MS260605l")["status"] == "ignored"
    out = ingest(mock, db, cfg, enforce_policy=False)      # the default grid, written on first use
    assert out.action == "fields" and out.decision.reason.startswith("given by hand (MS260605l is a mock event")
    assert GWState(db).event("MS260605l")["status"] == "active" and db.too_fields()
    retraction = shared_data / "gw" / "skyportal" / "igwn_gwalert_retraction.json"
    assert ingest(retraction, db, cfg, enforce_policy=False).action == "retracted" and db.too_fields() == []
    capsys.readouterr()
    assert main(["--data-dir", str(tmp_path / "run"), "too", "events"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("MS260605l retracted (RETRACTION)")
    assert [line.split()[1:3] for line in lines[1:]] == [["PRELIMINARY", "fields"], ["RETRACTION", "retracted"]]


def test_other_missions_voevents_are_refused_with_the_reason(shared_data):
    """The 13 real Fermi GBM / INTEGRAL VOEvents and the skyportal Swift, AMON and GBM ones are not
    LVK notices: each is refused with its ivorn (on the stream: dead-lettered with that reason)."""
    from ast3stream.gw import BadNotice

    gw = shared_data / "gw"
    files = [*sorted((gw / "voevents").glob("*.xml")),
             *(gw / "skyportal" / n for n in ("AMON.xml", "SWIFT_1125809-092.xml", "SWIFT_1125809-104.xml",
                                               "GRB180116A_Fermi_GBM_Gnd_Pos.xml"))]
    assert len(files) == 17
    for f in files:
        with pytest.raises(BadNotice, match=r"not an LVK gravitational-wave notice \(ivorn 'ivo://nasa.gsfc.gcn/"):
            read_notice(f)


def test_gcn_token_by_client_credentials_and_cached():
    """The OIDC client-credentials grant GCN uses, against a local token endpoint: one request, the
    token reused until a minute before it expires."""
    import asyncio
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from agents.gcn_bridge import GCNToken

    seen = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()))
            body = json.dumps({"access_token": f"tok{len(seen)}", "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        provider = GCNToken(f"http://127.0.0.1:{server.server_port}/oauth2/token", "my-id", "my-secret")

        async def twice():
            return await provider.token(), await provider.token()

        assert asyncio.run(twice()) == ("tok1", "tok1")
        assert seen == [{"grant_type": ["client_credentials"], "client_id": ["my-id"], "client_secret": ["my-secret"]}]
    finally:
        server.shutdown()
