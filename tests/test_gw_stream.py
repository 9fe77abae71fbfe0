"""GW notices through the real broker, GCN playing itself on the embedded broker: the worker's GCN
bridge forwards LVK notices from GCN-named topics to ``{prefix}.gw`` unchanged; the gw agent applies
the notice policy (the real low-significance S240116o and the mock MS260605l are ignored, with the
reason), S190425z's INITIAL fills the ToO list, an UPDATE with another map replaces it, the
RETRACTION empties it; the watcher routes exposures to the priority topic or the normal one
accordingly; junk is dead-lettered; an event whose stored map is truncated fails the coverage timer
on every tick, and the worker lives on with the other event's coverage reports coming."""
import asyncio
import json
import re
import time

import astropy.units as u
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from astropy.io import fits
from astropy.table import Table
from astropy_healpix import HEALPix

from agents.broker import ensure_topics_sync
from agents.db import Database
from agents.demo import read_topic
from agents.gw import GWState
from agents.runner import Stack
from agents.topics import topic
from ast3stream.events import ExposureEvent, decode
from waiting import until

pytestmark = pytest.mark.broker

INITIAL, UPDATE, RETRACTION = (f"gcn.classic.voevent.LVC_{t}" for t in ("INITIAL", "UPDATE", "RETRACTION"))


def _shifted_map(src, dest, dra: float) -> None:
    """The GW190425 BAYESTAR map turned by ``dra`` deg in RA (a second map for an UPDATE)."""
    prob = np.asarray(Table.read(src)["PROB"], float)
    hp = HEALPix(256, order="nested")
    lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
    prob = prob[hp.lonlat_to_healpix(lon - dra * u.deg, lat)]
    hdu = fits.BinTableHDU.from_columns([fits.Column("PROB", "D", array=prob / prob.sum())])
    hdu.header.update(PIXTYPE="HEALPIX", ORDERING="NESTED", NSIDE=256, INDXSCHM="IMPLICIT")
    hdu.writeto(dest)


def _voevent(text: str, alert_type: str, date: str, skymap: str | None) -> bytes:
    text = text.replace('name="AlertType" dataType="string" value="Initial"',
                        f'name="AlertType" dataType="string" value="{alert_type}"')
    text = re.sub(r"<Date>[^<]*</Date>", f"<Date>{date}</Date>", text)
    text = re.sub(r'(name="skymap_fits" dataType="string" value=")[^"]*"', rf'\g<1>{skymap}"', text) if skymap else \
        re.sub(r'<Param name="skymap_fits"[^>]*/>', "", text)
    return text.encode()


def _raw(path, field: str, seed: int) -> None:
    fits.PrimaryHDU(np.random.default_rng(seed).integers(0, 1000, (64, 64)).astype(np.uint16),
                    fits.Header({"FIELD": field, "MJD-OBS": 58598.5 + seed / 100})).writeto(path)


def _timer_errors(port: str, timer: str) -> float:
    """``ast3_timer_errors_total{timer}`` on the worker's ``/metrics`` page."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "ast3_timer_errors_total" and s.labels.get("timer") == timer)


def test_gcn_bridge_policy_update_retraction_and_lanes(broker, settings, shared_data, tmp_path):
    sky = shared_data / "gw" / "skyportal"
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "bayestar.fits.gz").symlink_to(sky / "bayestar.fits.gz")
    _shifted_map(sky / "bayestar.fits.gz", maps / "bayestar_shifted.fits", 60.0)
    settings.kafka.bootstrap = broker.bootstrap
    settings.kafka.prefix = "gwt"
    settings.watcher.stable_s = 0.3
    settings.gw.skymap_dir = maps
    settings.gw.max_fields = 20
    settings.gw.coverage_every_s = 1.0
    settings.gw.gcn = settings.gw.gcn.model_copy(update=dict(
        enabled=True, bootstrap=broker.bootstrap, oauth=False, offset_reset="earliest", group_id="gwt-bridge"))
    gcn_topics = ["igwn.gwalert", INITIAL, UPDATE, RETRACTION]
    ensure_topics_sync(broker.bootstrap, gcn_topics)
    settings.gw.gcn = settings.gw.gcn.model_copy(update=dict(topics=tuple(gcn_topics)))
    initial = (sky / "GW190425_initial.xml").read_text()
    s240116o = (shared_data / "gw" / "lvk" / "S240116o-preliminary_fink-modified-times.json").read_bytes()

    async def send(*pairs):
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0, max_request_size=16 << 20)
        await producer.start()
        for name, value in pairs:
            await producer.send_and_wait(name, value)        # GCN's framing: the bare notice, no key
        await producer.stop()

    db = Database.from_settings(settings)
    state = GWState(db)

    def fields():
        return {r["field_id"] for r in db.too_fields() if r["event_id"] == "S190425z"}

    def actions():
        return [(n["event_id"], n["alert_type"], n["action"]) for n in state.notices()]

    with Stack(settings, watch=True, stages=["gw"]) as stack:
        def wait(cond, what):        # a dead worker fails at once, with its log
            until(cond, what, timeout=180, check=stack.check_workers, poll=0.3)

        asyncio.run(send(("igwn.gwalert", s240116o),
                         ("igwn.gwalert", (sky / "igwn_gwalert_preliminary.json").read_bytes()),
                         (INITIAL, initial.encode()), ("igwn.gwalert", b"<not a notice")))
        wait(lambda: len(actions()) == 3, "the first three notices' actions")
        assert sorted(actions()) == [("MS260605l", "PRELIMINARY", "ignored"), ("S190425z", "INITIAL", "fields"),
                                     ("S240116o", "PRELIMINARY", "ignored")]       # GCN's topics: any order
        notes = {n["event_id"]: n for n in state.notices()}
        assert notes["S240116o"]["reason"] == "not significant (FAR 66.2 per year)"
        assert notes["MS260605l"]["reason"].startswith("MS260605l is a mock event")
        assert notes["S190425z"]["origin"] == INITIAL
        first = fields()
        assert len(first) == 20 and {e["event_id"]: e["status"] for e in state.events()} == {
            "S240116o": "ignored", "MS260605l": "ignored", "S190425z": "active"}
        ev = state.event("S190425z")
        assert ev["area90_deg2"] == pytest.approx(10183, rel=2e-3) and ev["far_per_year"] == pytest.approx(1.43e-5, rel=0.01)
        assert db.too_fields() and all(r["event_id"] == "S190425z" for r in db.too_fields())
        def plans():
            return list((settings.products_dir / "gw" / "S190425z").glob("plan-S190425z-*.json"))

        wait(lambda: len(plans()) == 1, "tonight's plan")                     # written at once
        assert json.loads(plans()[0].read_text())["site"] == "Yaoan"
        # the bridge forwarded every notice unchanged, keyed by its GCN topic (GCN's topic names are
        # global: on the suite's shared broker another test's notice may be there too)
        sent = sorted([(b"igwn.gwalert", s240116o), (b"igwn.gwalert", (sky / "igwn_gwalert_preliminary.json").read_bytes()),
                       (b"igwn.gwalert", b"<not a notice"), (INITIAL.encode(), initial.encode())])
        forwarded: list = []

        def all_forwarded():                       # the bridge and the GW agent run side by side
            forwarded[:] = [(m.key, m.value) for m in asyncio.run(read_topic(broker.bootstrap, topic("gwt", "gw"), 2.0))]
            return all(m in forwarded for m in sent)

        wait(all_forwarded, "every notice forwarded")
        assert all(forwarded.count(m) == 1 for m in sent if m[0] == b"igwn.gwalert")   # each once
        dead = [decode(m.value, "deadletter") for m in
                asyncio.run(read_topic(broker.bootstrap, topic("gwt", "deadletter"), 2.0))]
        assert len(dead) == 1 and dead[0]["reason"].startswith("GW notice rejected") and dead[0]["value"] == b"<not a notice"

        asyncio.run(send((UPDATE, _voevent(initial, "Update", "2019-04-25T10:00:00", "bayestar_shifted.fits"))))
        wait(lambda: fields() and fields() != first, "the UPDATE's fields")
        second = fields()
        assert len(second) == 20 and not (first & second)      # the turned map: other fields, the old ones dropped
        assert state.event("S190425z")["alert_type"] == "UPDATE"

        dropped, kept = sorted(first)[0], sorted(second)[0]
        watch = settings.watch_dir
        watch.mkdir(parents=True, exist_ok=True)
        _raw(watch / "dropped.fits", dropped, 1)
        _raw(watch / "kept.fits", kept, 2)

        def routed():
            lanes = {}
            for name in ("exposures", "exposures.too"):
                for m in asyncio.run(read_topic(broker.bootstrap, topic("gwt", name), 0.5)):
                    lanes[ExposureEvent.decode(m.value).field_id] = name
            return lanes

        wait(lambda: len(routed()) == 2, "both exposures routed")
        assert routed() == {dropped: "exposures", kept: "exposures.too"}
        # an event whose stored map is truncated: its coverage fails on every tick, non-transiently; the
        # worker lives on (a faust timer that raises stops the worker) and the other event's report comes
        bad_map = maps / "truncated.fits"
        bad_map.write_bytes((maps / "bayestar_shifted.fits").read_bytes()[:20000])
        with db.engine.begin() as conn:
            conn.execute(state.events_t.insert().values(event_id="S000000bad", status="active", skymap_path=str(bad_map),
                                                        last_received_at=time.time() + 3600,   # listed first
                                                        expires_at=time.time() + 3600))
        # the worker's coverage report (every second here) counts processed exposures only: no chain runs
        # here, so the ToO exposure is marked calibrated by hand, with its limiting magnitude
        report = settings.products_dir / "gw" / "S190425z" / "coverage-S190425z.json"
        wait(report.exists, "the coverage report")
        assert json.loads(report.read_text())["n_exposures"] == 0
        too_id = ExposureEvent.decode(asyncio.run(read_topic(broker.bootstrap, topic("gwt", "exposures.too"),
                                                             0.5))[0].value).exposure_id
        db.update_exposure(too_id, status="calibrated", quality={"maglim": 20.4})

        def covered():
            return json.loads(report.read_text()) if report.exists() else {}

        wait(lambda: covered().get("n_exposures") == 1, "the coverage of the calibrated exposure")
        kept_prob = next(r["prob"] for r in db.too_fields() if r["field_id"] == kept)
        assert covered()["prob_covered"] == pytest.approx(kept_prob, rel=1e-6)
        assert covered()["by_depth"] == [{"maglim": 20.0, "prob": pytest.approx(kept_prob, rel=1e-6)}]

        # the bad event failed on tick after tick, counted each time and logged once with its reason
        port = stack.procs[0].args[stack.procs[0].args.index("--web-port") + 1]
        wait(lambda: _timer_errors(port, "gw_coverage") >= 3, "the coverage timer to tick again after its errors")
        logged = [line for line in (stack.log_dir / "worker0.log").read_text().splitlines()
                  if "timer gw_coverage: event S000000bad:" in line]
        assert len(logged) == 1 and "logged once per cause" in logged[0], logged

        asyncio.run(send((RETRACTION, _voevent(initial, "Retraction", "2019-04-25T11:00:00", None))))
        wait(lambda: state.event("S190425z")["status"] == "retracted", "the RETRACTION")
        assert db.too_fields() == []
        _raw(watch / "after.fits", kept, 3)
        wait(lambda: len(routed()) == 2 and sum(1 for _ in asyncio.run(
            read_topic(broker.bootstrap, topic("gwt", "exposures"), 0.5))) == 2, "the exposure after the RETRACTION")
        assert sorted(a[2] for a in actions()[:3]) == ["fields", "ignored", "ignored"]
        assert actions()[3:] == [("S190425z", "UPDATE", "fields"), ("S190425z", "RETRACTION", "retracted")]


def test_bridge_both_ways_and_gcn_credentials(broker, settings, shared_data):
    """The bridge on its own: GCN's ``igwn.gwalert`` into ``{prefix}.gw`` unchanged, our ``{prefix}.gcn``
    out to the configured GCN topic; GCN credentials come from the environment only."""
    from agents.gcn_bridge import GCNToken, bridge, client_settings

    gcn = settings.gw.gcn.model_copy(update=dict(bootstrap=broker.bootstrap, oauth=False, offset_reset="earliest",
                                                 group_id="gwb", topics=("gwb.igwn.gwalert",),
                                                 publish_topic="gwb.gcn.notices.ast3"))
    ensure_topics_sync(broker.bootstrap, ["gwb.igwn.gwalert", "gwb.gw", "gwb.gcn", "gwb.gcn.notices.ast3"])
    lvk = (shared_data / "gw" / "lvk" / "S240116o-preliminary_fink-modified-times.json").read_bytes()
    ours = b'{"$schema": "urn:ast3stream:schemas:gcn:optical_counterpart:1.0"}'

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.create_task(bridge(gcn, broker.bootstrap, "gwb", stop))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0, max_request_size=16 << 20)
        await producer.start()
        await producer.send_and_wait("gwb.igwn.gwalert", lvk)
        await producer.send_and_wait("gwb.gcn", ours)
        await producer.stop()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = (await read_topic(broker.bootstrap, "gwb.gw", 0.5), await read_topic(broker.bootstrap,
                                                                                       "gwb.gcn.notices.ast3", 0.5))
            if all(got):
                break
        stop.set()
        return got, await task

    (inbound, outbound), moved = asyncio.run(scenario())
    assert moved == 2 and [m.value for m in inbound] == [lvk] and [m.value for m in outbound] == [ours]
    with pytest.raises(RuntimeError, match="GCN_CLIENT_ID and GCN_CLIENT_SECRET"):
        client_settings(settings.gw.gcn, env={})
    secure = client_settings(settings.gw.gcn, env={"GCN_CLIENT_ID": "id", "GCN_CLIENT_SECRET": "s3cret"})
    assert secure["security_protocol"] == "SASL_SSL" and secure["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(secure["sasl_oauth_token_provider"], GCNToken) and "s3cret" not in repr(secure)


def test_a_map_rewritten_while_it_is_read_is_always_whole(shared_data, tmp_path):
    """A notice delivered twice (GCN and the bridge deliver at least once; GCN's topics are global)
    writes its stored map again while the worker's coverage timer reads it: a reader sees the old
    file or the new one, never a truncated one (which crashed the worker in a loaded CI run)."""
    import threading

    from ast3stream.gw.skymap import read_skymap, write_skymap

    fine = read_skymap(shared_data / "gw" / "skyportal" / "bayestar.fits.gz")   # NSIDE 256, nested
    prob = (np.asarray(fine["PROBDENSITY"]) * 4 * np.pi / len(fine)).reshape(-1, 64).sum(axis=1)   # NSIDE 32
    sky = Table({"UNIQ": 4 * 32**2 + np.arange(len(prob)), "PROBDENSITY": prob * len(prob) / (4 * np.pi)})
    path = write_skymap(sky, tmp_path / "initial.multiorder.fits")
    done = threading.Event()

    def rewrite():
        while not done.is_set():
            write_skymap(sky, path)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        for _ in range(100):
            assert len(read_skymap(path)) == len(sky)
    finally:
        done.set()
        writer.join()
    assert list(tmp_path.iterdir()) == [path]
