"""The portal's JSON API (and a few pages) over a survey database built from real ZTF alerts
and the S240116o notice (tests/portal_night.py): every endpoint, paging, filters, sorting,
404s, bad parameters (400 with the reason), the token on operator actions, escaping."""
import asyncio
import io
import json

import fastavro
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from agents.chain import Resources
from agents.portal import create_app, images
from ast3stream.alerts import read_alerts, read_cutout
from ast3stream.gw.notices import read_notice
from ast3stream.gw.skymap import credible_level_at

import portal_night

pytestmark = pytest.mark.shared
TOKEN = "sesame"


@pytest.fixture(scope="module")
def night(shared_data, tmp_path_factory):
    cfg = portal_night.settings(tmp_path_factory.mktemp("portal_api"), portal={"token": TOKEN})
    return cfg, portal_night.build(cfg, shared_data)


@pytest.fixture(scope="module")
def client(night):
    with TestClient(create_app(night[0])) as c:
        yield c


def _error(r, status: int) -> str:
    assert r.status_code == status, r.text[:300]
    return r.json()["error"]


def test_night_lists_the_latest_night_with_stages_quality_and_latencies(client, night):
    _, built = night
    n = client.get("/api/night").json()
    assert n["night"] == "20231011"  # ZTF's 2023-10-12 UT exposure: the night is the UTC date 12 h before
    assert [e["exposure_id"] for e in n["exposures"]] == sorted(built["night_exposures"])
    e = n["exposures"][0]
    assert e["too"] and e["lanes"] == ["qip", "dip"] and e["status"] == "alerted"
    assert set(e["stages"]["dip"].values()) == {"done"} and e["quality"]["maglim"] == pytest.approx(20.05, abs=0.01)
    assert len(n["latency_s"]) == n["alerts"] == 22 and all(10 < s < 60 for s in n["latency_s"])
    assert len(n["nights"]) == 1 + len({x["night"] for x in n["nights"][1:]})
    older = client.get("/api/night", params={"night": "20210630"}).json()
    assert [x["field_id"] for x in older["exposures"]] == ["ZTF550", "ZTF550"]
    assert "expected YYYYMMDD" in _error(client.get("/api/night", params={"night": "last week"}), 400)
    assert "no exposures in night 20000101" in _error(client.get("/api/night", params={"night": "20000101"}), 404)
    html = client.get("/").text
    assert all(f'data-exposure="{x}"' in html for x in built["night_exposures"])
    assert client.get("/fragments/exposures", params={"night": "20231011"}).text.count("<tr data-exposure") == 4
    assert client.get("/img/latency.png").content[:4] == b"\x89PNG"


def test_candidates_filter_sort_and_page(client, night):
    _, built = night
    get = lambda **p: client.get("/api/candidates", params=p).json()  # noqa: E731
    everything = get(per_page=500)
    assert everything["total"] == built["candidates"] == 58
    pages = [get(per_page=25, page=i, sort="mag", order="asc") for i in (1, 2, 3)]
    assert [len(p["items"]) for p in pages] == [25, 25, 8] and pages[0]["pages"] == 3
    mags = [c["mag"] for p in pages for c in p["items"]]
    assert mags == sorted(mags) and len({c["candidate_id"] for p in pages for c in p["items"]}) == 58
    scores = [c["score"] for c in get(sort="score", order="desc", per_page=500)["items"]]
    assert scores == sorted(scores, reverse=True)
    real = get(min_score=0.5, per_page=500)
    assert real["total"] == built["alerts"] and all(c["score"] >= 0.5 and c["alert_id"] for c in real["items"])
    assert {c["object_id"] for c in get(alerted="false")["items"]} == {"ZTF19abtktkd", "ZTF19aciwwya"}
    bright = get(max_mag=14, per_page=500)["items"]
    assert bright and all(c["mag"] <= 14 for c in bright)
    asteroids = get(not_asteroid="false", per_page=500)["items"]
    assert len(asteroids) == 15 and all(c["ssnamenr"] for c in asteroids)
    assert all(c["ssnamenr"] is None for c in get(not_asteroid="true", per_page=500)["items"])
    gw = get(in_gw_field="true", per_page=500)
    assert gw["total"] == 24 and {(c["gw_event"], c["field_id"]) for c in gw["items"]} == {("S240116o", built["field"])}
    hosts = get(has_host="true", per_page=500)["items"]
    assert all(c["host_id"].startswith("PS1 ") and c["host_sep_arcsec"] <= 1.0 for c in hosts)
    assert get(has_host="true")["total"] + get(has_host="false")["total"] == 58
    assert get(lane="qip")["total"] == 0 and get(lane="dip", object="ZTF21abiuvdk")["total"] == 34
    assert get(night="20231011")["total"] == 24
    for params, reason in [({"min_score": "high"}, "min_score='high': expected a number"),
                           ({"max_mag": "nan"}, "expected a finite number"),
                           ({"sort": "ra"}, "sort='ra': expected one of"), ({"order": "up"}, "expected asc or desc"),
                           ({"page": "0"}, "page must be >= 1"), ({"per_page": "5000"}, "per_page between 1 and 500"),
                           ({"page": "1.5"}, "expected a whole number"), ({"lane": "x"}, "expected qip or dip"),
                           ({"has_host": "maybe"}, "expected true or false"), ({"colour": "red"}, "unknown parameter"),
                           ({"night": "yesterday"}, "night 'yesterday': expected YYYYMMDD")]:
        assert reason in _error(client.get("/api/candidates", params=params), 400), params
    page = client.get("/candidates", params={"sort": "ra"})
    assert page.status_code == 400 and "expected one of" in page.text


def test_candidate_stamps_are_the_real_cutouts(client, night, shared_data):
    cfg, built = night
    c = client.get("/api/candidates", params={"object": "ZTF19abtktkd"}).json()["items"][0]  # below threshold: no alert
    assert c["alert_id"] is None and client.get(f"/api/candidates/{c['candidate_id']}").json() == c
    truth = next(v for v in read_alerts(shared_data / portal_night.NIGHT) if v.object_id == "ZTF19abtktkd")
    res = Resources(cfg)
    bundle = res.store.path(res.store.key("live", c["exposure_id"], "dip", "bundle.fits"))
    for kind in ("science", "template", "difference"):  # cut from the lane bundle at the candidate's position
        cut, real = images.bundle_stamp(str(bundle), kind, c["x"], c["y"], 63), read_cutout(truth.cutouts[kind])[0]
        sigma = 1.4826 * np.median(np.abs(real - np.median(real)))
        assert np.max(np.abs(cut - real)) < sigma / 8  # the bundle quantises at noise / 16
    alerted = client.get("/api/candidates", params={"alerted": "true", "per_page": 1}).json()["items"][0]
    for cand in (c, alerted):
        for kind in ("science", "template", "difference", "snr"):
            r = client.get(f"/img/stamp/{kind}/{cand['candidate_id']}.png")
            assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (189, 189)
    assert "expected one of" in _error(client.get(f"/img/stamp/colour/{c['candidate_id']}.png"), 400)
    assert "no candidate" in _error(client.get("/api/candidates/nope:dip:0"), 404)
    assert client.get("/img/stamp/science/nope:dip:0.png").status_code == 404


def test_object_light_curve_and_alert_downloads(client, night):
    _, built = night
    o = client.get(f"/api/objects/{built['series']}").json()
    det = [p for p in o["light_curve"] if p["detected"]]
    assert len(det) == len(o["epochs"]) == built["series_epochs"] == 34 and o["n_det"] == 34
    assert any(not p["detected"] and p["maglim"] for p in o["light_curve"])
    assert [p["mjd"] for p in o["light_curve"]] == sorted(p["mjd"] for p in o["light_curve"])
    assert client.get(f"/img/lightcurve/{built['series']}.png").content[:4] == b"\x89PNG"
    assert "no object" in _error(client.get("/api/objects/ZTF99nothing"), 404)
    aid = o["alerts"][-1]
    avro = client.get(f"/alerts/{aid}.avro")
    assert avro.status_code == 200 and "attachment" in avro.headers["content-disposition"]
    (packet,) = list(fastavro.reader(io.BytesIO(avro.content)))
    assert str(packet["alertId"]) == aid and packet["objectId"] == built["series"]
    assert len(packet["prv_candidates"]) > 10 and packet["cutoutScience"]["stampData"][:2] == b"\x1f\x8b"
    as_json = json.loads(client.get(f"/alerts/{aid}.json").content)
    assert as_json["alertId"] == packet["alertId"] and as_json["cutoutDifference"]["stampData"]
    assert "no alert" in _error(client.get("/alerts/123.avro"), 404)
    assert "expected avro or json" in _error(client.get(f"/alerts/{aid}.xml"), 400)


def test_too_plan_coverage_and_candidates_in_the_credible_region(client, night, shared_data):
    _, built = night
    too = client.get("/api/too").json()
    (ev,) = too["events"]
    assert ev["event_id"] == "S240116o" and len(ev["fields"]) > 100 and too["others"] == []
    assert (ev["status"], ev["alert_type"], ev["has_skymap"]) == ("active", "PRELIMINARY", True)
    assert ev["classification"]["Terrestrial"] == pytest.approx(0.808, abs=1e-3) and ev["area90_deg2"] > 100
    assert [f["rank"] for f in ev["fields"]] == list(range(1, len(ev["fields"]) + 1))
    observed = [f for f in ev["fields"] if f["exposures"]]
    assert [f["field_id"] for f in observed] == [built["field"]] and len(observed[0]["exposures"]) == 4
    assert ev["coverage"] == pytest.approx(observed[0]["prob"]) and observed[0]["ra"] == pytest.approx(46.29, abs=0.01)
    skymap = read_notice(shared_data / portal_night.S240116O).skymap  # the notice's own map, read again
    night_cands = client.get("/api/candidates", params={"night": "20231011", "per_page": 100}).json()["items"]
    levels = credible_level_at(skymap, [c["ra"] for c in night_cands], [c["dec"] for c in night_cands])
    inside = {c["candidate_id"] for c, level in zip(night_cands, levels) if level <= 0.9}
    assert {c["candidate_id"] for c in ev["candidates"]} == inside and 10 <= len(inside) < 24
    assert all(c["credible_level"] <= 0.9 for c in ev["candidates"])
    assert client.get("/img/plan/S240116o.png").content[:4] == b"\x89PNG"
    assert "no active ToO event" in _error(client.get("/img/plan/S200101a.png"), 404)


def test_exposure_page_escapes_header_text(client, night):
    _, built = night
    eid = built["script_exposure"]
    e = client.get(f"/api/exposures/{eid}").json()
    assert ("OBJECT", portal_night.SCRIPT, "") in [tuple(c) for c in e["header"]]
    assert len(e["candidate_list"]) == e["candidates"] == 1 and e["timings"][0]["stage"] == "reduction"
    html = client.get(f"/exposures/{eid}").text
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html and portal_night.SCRIPT not in html
    assert "no exposure" in _error(client.get("/api/exposures/nope"), 404)
    assert client.get("/exposures/nope").status_code == 404


def test_operator_actions_need_the_token(night):
    cfg, _ = night
    Resources(cfg).db.record_dead_letter("watcher", "ingest", "bad.fits", "cannot read exposure bad.fits")
    read_only = cfg.model_copy(update={"portal": cfg.portal.model_copy(update={"token": None})})
    with TestClient(create_app(read_only)) as c:
        assert "read-only" in _error(c.post("/api/deadletters/1/retry"), 403)
        page = c.post("/deadletters/1/retry", data={"token": TOKEN}, follow_redirects=False)
        assert page.status_code == 303 and "read-only" in page.headers["location"].replace("+", " ")
    with TestClient(create_app(cfg)) as c:
        assert "token missing or wrong" in _error(c.post("/api/templates/F1/rebuild"), 403)
        auth = {"Authorization": "Bearer nope"}
        assert "token missing or wrong" in _error(c.post("/api/templates/F1/rebuild", headers=auth), 403)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        dl = c.get("/api/deadletters").json()["dead_letters"][0]["id"]
        assert "needs the broker" in _error(c.post(f"/api/deadletters/{dl}/retry", headers=auth), 409)
        assert "no template for field" in _error(c.post("/api/templates/F1/rebuild", headers=auth), 404)
        assert "needs exposure=" in _error(c.post("/api/templates/F1/set", headers=auth), 400)
        assert "is of field" in _error(c.post("/api/templates/F1/set?exposure=ztf_1642404680815", headers=auth), 409)
        assert "not a number" in _error(c.post("/api/deadletters/x/retry", headers=auth), 400)


def test_retry_republishes_the_original_message(night, broker):
    """A stage's dead letter: retry sends its original key and value to the original topic."""
    from agents.broker import ensure_topics
    from agents.demo import read_topic
    from agents.topics import all_topics, topic
    from ast3stream.events import deadletter
    from aiokafka import AIOKafkaProducer

    cfg, _ = night
    cfg = cfg.model_copy(deep=True)
    cfg.kafka.bootstrap, cfg.kafka.prefix = broker.bootstrap, "tpa"
    original = b"A3\x01 a message the reduction could not read"
    source = topic("tpa", "exposures")

    async def dead_letter():
        await ensure_topics(broker.bootstrap, all_topics("tpa"))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        await producer.send_and_wait(topic("tpa", "deadletter"), deadletter(
            source, "chain-dip", "chain-dip: malformed exposure event", "MalformedMessage", key=b"k1", value=original,
            partition=0, offset=7, exposure_id="ztf_1"), key=b"k1")
        await producer.stop()

    asyncio.run(dead_letter())
    res = Resources(cfg)
    res.db.record_dead_letter(source, "chain-dip", "ztf_1", "chain-dip: malformed exposure event")
    dl = res.db.rows("dead_letters", exposure_id="ztf_1")[0]
    with TestClient(create_app(cfg, res)) as c:
        listed = c.get("/api/deadletters").json()
        row = next(d for d in listed["dead_letters"] if d["id"] == dl["id"])
        assert listed["broker"] == broker.bootstrap and not row["exposure_known"]
        assert (row["source_partition"], row["source_offset"], row["error_type"]) == (0, 7, "MalformedMessage")
        assert "tpa.exposures [0] @ 7" in c.get("/deadletters").text
        r = c.post(f"/api/deadletters/{dl['id']}/retry", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert r.json()["topic"] == source
        assert "no dead letter 999" in _error(c.post("/api/deadletters/999/retry",
                                                     headers={"Authorization": f"Bearer {TOKEN}"}), 404)
    (msg,) = asyncio.run(read_topic(broker.bootstrap, source, timeout=1.0))
    assert (msg.key, msg.value, msg.offset) == (b"k1", original, r.json()["offset"])


def test_template_set_and_rebuild_by_an_operator(small_night, night_settings):
    """On a simulated night: the operator makes the second exposure the field's template
    (its raw file goes through the front half again), then rebuilds it."""
    from ast3stream.rawfile import describe

    cfg = night_settings("portal_templates", portal={"token": TOKEN})
    res = Resources(cfg)
    for exp in small_night[1].exposures:
        ev = describe(exp.path, res)
        res.db.register_exposure(ev)
    first, second = (e.expid for e in small_night[1].exposures[:2])
    field = res.db.rows("exposures", exposure_id=first)[0]["field_id"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(cfg, res)) as c:
        assert c.get("/api/templates").json() == {"fields": []}
        assert "no template for field" in _error(c.post(f"/api/templates/{field}/rebuild", headers=auth), 404)
        assert "no exposure 'nope'" in _error(c.post(f"/api/templates/{field}/set?exposure=nope", headers=auth), 404)
        r = c.post(f"/api/templates/{field}/set", params={"exposure": second}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["exposure_id"] == second and 18 < r.json()["maglim"] < 23
        (f,) = c.get("/api/templates").json()["fields"]
        assert {lane: t["exposure_id"] for lane, t in f["lanes"].items()} == {"dip": second, "qip": second}
        made = f["lanes"]["dip"]["created_at"]
        page = c.post(f"/templates/{field}/rebuild", data={"token": TOKEN})  # the page's form, redirected back
        assert page.status_code == 200 and f"exposure_id: {second}" in page.text and 'id="msg"' in page.text
        assert res.db.template(field, "dip")["created_at"] > made
        assert res.store.path(res.db.template(field, "dip")["path"]).exists()
