"""Filter streams: the safe expression language (on our alerts and real ZTF alerts), watchlists
and MOC regions, and the server-side stream on the real embedded broker: a filter (score >= 0.8,
in a GW 90 % region, not an asteroid) delivers exactly the matching alerts to its own topic."""
from __future__ import annotations

import asyncio
import copy

import numpy as np
import pytest

from ast3stream.alerts import build_alert, encode, read_alerts
from ast3stream.alerts.filters import Expression, FilterError, FilterSpec, credible_region_moc
from ast3stream.config import KafkaConfig


def packet(i: int, ra: float, dec: float, score: float, lane: str = "dip", asteroid: bool = False) -> dict:
    cand = {"x": 100.0 + i, "y": 50.0, "ra": ra, "dec": dec, "mag": 18.0 + 0.01 * i, "mag_err": 0.05, "snr": 20.0,
            "sign": 1, "rb": score, "object_id": f"A3obj{i:04d}"}
    if asteroid:
        cand.update(ssnamenr="433", ss_sep_arcsec=2.5, ss_mag=17.0)
    return build_alert(cand, [], None, {}, {"exposure_id": f"e{i}", "lane": lane, "mjd": 60500.0 + i / 1000,
                                           "model_version": "rb-1", "alert_id": 1000 + i})


def test_expressions():
    a = packet(1, 150.0, 2.0, 0.9)
    assert Expression("score >= 0.8 and not asteroid and mag < 19")(a)
    assert Expression("candidate.drb > 0.85 and candidate.lane == 'dip' and 0 < ra < 180")(a)
    assert Expression("survey in ['ast3stream', 'ztf'] and ssnamenr is None and candidate.nothing is None")(a)
    assert not Expression("score < 0.5 or -mag > 0")(a)
    assert not Expression("maglim > 20")(a) and Expression("not (maglim <= 20)")(a)      # null compares false
    rock = packet(2, 150.0, 2.0, 0.9, asteroid=True)
    assert Expression("asteroid and ss_sep_arcsec < 5")(rock) and not Expression("not asteroid")(rock)
    for bad in ("__import__('os').system('true')", "score.__class__", "[x for x in ra]", "lambda: 1",
                "open('/etc/passwd')", "score ** 2 > 1", "foo > 1", "ra >", "candidate['drb'] > 0"):
        with pytest.raises(FilterError):
            Expression(bad)


def test_expressions_on_real_ztf_alerts(shared_data):
    views = list(read_alerts(shared_data / "alerts" / "ztf"))[:120]
    keep = Expression("candidate.drb >= 0.9 and candidate.fid == 2 and candidate.isdiffpos == 't' and not asteroid")
    expected = [v.candid for v in views if (v.record["candidate"].get("drb") or 0) >= 0.9
                and v.record["candidate"]["fid"] == 2 and v.record["candidate"]["isdiffpos"] in ("t", "1")
                and not (v.ssnamenr and (v.ss_sep_arcsec is None or v.ss_sep_arcsec <= 10))]
    got = [v.candid for v in views if keep(v)]
    assert got == expected and 0 < len(got) < len(views)


def test_filter_spec_json_watchlist_and_moc():
    spec = FilterSpec("near-m31", expr="score >= 0.5", watchlist=[(10.6847, 41.2690, 30.0)], moc=[4 + 1], lanes=["dip"])
    assert FilterSpec.from_json(spec.to_json()) == spec
    near = packet(1, 10.6847 + 20 / 3600 / np.cos(np.radians(41.269)), 41.2690, 0.7)
    far = packet(2, 10.6847 + 40 / 3600 / np.cos(np.radians(41.269)), 41.2690, 0.7)
    assert FilterSpec("w", watchlist=spec.watchlist)(near) and not FilterSpec("w", watchlist=spec.watchlist)(far)
    # order-0 NUNIQ cells: uniq 4 + ipix; ipix 0 covers RA 0-90 deg, Dec ~ +42 (NESTED base pixel 0 centre: 45, 41.8)
    assert FilterSpec("m", moc=[4])(packet(3, 45.0, 41.8, 0.7)) and not FilterSpec("m", moc=[4])(packet(4, 225.0, -41.8, 0.7))
    for bad in ({"name": "bad name!"}, {"name": "x", "expr": "import os"}, {"name": "x", "moc": [1]}):
        with pytest.raises(FilterError):
            FilterSpec(**bad)


@pytest.fixture(scope="module")
def gw_region(shared_data):
    from ast3stream.gw.skymap import credible_level_at, read_skymap

    skymap = read_skymap(shared_data / "gw" / "lvk" / "S240116o_bayestar.multiorder.fits")
    return skymap, credible_region_moc(skymap, 0.9), credible_level_at


def night(gw_region) -> list[dict]:
    """40 alert packets of a night: positions in and out of the GW 90 % region, scores 0-1,
    every fifth one a known asteroid, both lanes."""
    skymap, _, level_at = gw_region
    from astropy_healpix import HEALPix, uniq_to_level_ipix
    import astropy.units as u

    rng = np.random.default_rng(7)
    dens = np.argsort(-np.asarray(skymap["PROBDENSITY"]))[:200]            # dense pixels: inside
    level, ipix = uniq_to_level_ipix(np.asarray(skymap["UNIQ"])[dens])
    inside = [HEALPix(2**int(lv), order="nested").healpix_to_lonlat([ip]) for lv, ip in zip(level, ipix)]
    alerts = []
    for i in range(40):
        if i % 2:
            lon, lat = inside[i]
            ra, dec = float(lon.to_value(u.deg)[0]), float(lat.to_value(u.deg)[0])
        else:
            ra, dec = float(rng.uniform(0, 360)), float(rng.uniform(-80, 80))
        alerts.append(packet(i, ra, dec, float(rng.uniform(0, 1)), lane="qip" if i % 3 == 0 else "dip",
                             asteroid=i % 5 == 0))
    return alerts


@pytest.mark.broker
def test_a_filter_stream_delivers_exactly_its_alerts(broker, gw_region):
    from aiokafka import AIOKafkaProducer

    from agents.filterstream import FilterStream, list_filters, put_filter, remove_filter
    from agents.topics import filter_topic, topic
    from agents.demo import read_topic

    skymap, moc, level_at = gw_region
    kafka = KafkaConfig(bootstrap=broker.bootstrap, prefix="fstest")
    alerts = night(gw_region)
    in_gw = {a["candid"] for a in alerts if level_at(skymap, a["candidate"]["ra"], a["candidate"]["dec"])[0] <= 0.9}
    expected = {a["candid"] for a in alerts if a["candidate"]["drb"] >= 0.8 and a["candid"] in in_gw
                and a["candidate"]["ssnamenr"] is None}
    assert 2 <= len(expected) < len([a for a in alerts if a["candidate"]["drb"] >= 0.8])  # the cut means something

    gw = FilterSpec("gw-bright", expr="score >= 0.8 and not asteroid", moc=moc)
    rocks = FilterSpec("rocks", expr="asteroid", lanes=["dip"])
    asyncio.run(put_filter(kafka, gw))
    asyncio.run(put_filter(kafka, rocks))

    async def produce(batch):
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        try:
            await producer.send_and_wait(topic("fstest", "alerts.dip"), b"not an alert", key=b"x")
            for a in batch:
                value = encode(a, framing="container" if a["candid"] % 2 else "confluent")
                await producer.send_and_wait(topic("fstest", f"alerts.{a['candidate']['lane']}"), value,
                                             key=a["objectId"].encode())
        finally:
            await producer.stop()

    asyncio.run(produce(alerts[:25]))
    first = asyncio.run(FilterStream(kafka).run(idle_timeout_s=2.0))
    asyncio.run(produce(alerts[25:]))                                 # a restarted stream resumes (group offsets)
    second = asyncio.run(FilterStream(kafka).run(idle_timeout_s=2.0))

    from ast3stream.alerts import decode

    got = {lane: [decode(m.value)["candid"] for m in asyncio.run(read_topic(broker.bootstrap, filter_topic("fstest", "gw-bright", lane), 2.0))]
           for lane in ("qip", "dip")}
    assert sorted(got["qip"] + got["dip"]) == sorted(expected)                            # exactly, no duplicates
    assert all(a["candidate"]["lane"] == lane for lane, ids in got.items() for a in alerts if a["candid"] in ids)
    rock_ids = [decode(m.value)["candid"] for m in asyncio.run(read_topic(broker.bootstrap, filter_topic("fstest", "rocks", "dip"), 2.0))]
    assert sorted(rock_ids) == sorted(a["candid"] for a in alerts if a["candidate"]["ssnamenr"] and a["candidate"]["lane"] == "dip")
    assert first.get("gw-bright", 0) + second.get("gw-bright", 0) == len(expected)
    # definitions survive restarts (compacted topic), and go away when removed
    assert set(asyncio.run(list_filters(kafka))) == {"gw-bright", "rocks"}
    asyncio.run(remove_filter(kafka, "rocks"))
    assert list(asyncio.run(list_filters(kafka))) == ["gw-bright"]
