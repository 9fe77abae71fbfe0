"""Alert packets: real ZTF/PGIR/WINTER alerts through our reader; our alerts read back by
plain fastavro with only the .avsc files; cutouts are FITS with a WCS; filters; output;
the subscriber through the real embedded broker."""
from __future__ import annotations

import asyncio
import copy
import gzip
import io
import json

import fastavro
import fastavro.schema
import matplotlib.image
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from ast3stream.alerts import (AlertFilter, alert_id, build_alert, decode, encode, load_schema, make_cutout,
                               read_alerts, read_avro_file, read_cutout, view, write_avro_file)
from ast3stream.alerts.output import table_header, table_row, to_json, write_files
from ast3stream.alerts.registry import RegistryError, SchemaRegistry
from ast3stream.alerts.schema import SCHEMA_DIR, raw_schema, schema_path
from ast3stream.alerts.serialize import AlertWire, read_message
from ast3stream.events import MalformedMessage
from registry_server import Registry

X, Y, SIZE = 57.3, 40.6, 31


@pytest.fixture(scope="module")
def image():
    """A 120 x 100 image with a TAN WCS and a Gaussian star at (X, Y)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [60.0, 50.0]
    w.wcs.cdelt = [-0.41 / 3600, 0.41 / 3600]
    header = w.to_header()
    header["MJD-OBS"] = 60500.1
    yy, xx = np.mgrid[:100, :120]
    data = 1000.0 * np.exp(-((xx - X) ** 2 + (yy - Y) ** 2) / (2 * 1.3**2)) + 10.0
    return data.astype(np.float32), header, w


@pytest.fixture(scope="module")
def alert(image):
    data, header, w = image
    ra, dec = w.pixel_to_world_values(X, Y)
    cand = {"x": np.float32(X), "y": np.float32(Y), "ra": np.float64(ra), "dec": np.float64(dec),
            "mag": np.float32(18.3), "mag_err": 0.05, "flux": 1.5e4, "flux_err": 300.0, "snr": 50.0,
            "sign": 1, "fwhm": 3.1, "elongation": 1.1, "rb": np.float32(0.93), "object_id": "A3deadbeef00",
            "host_id": "43495", "host_sep_arcsec": 4.2, "host_dist_mpc": 40.1, "ssnamenr": "", "ss_mag": np.nan}
    prv = [{"mjd": 60499.1, "exposure_id": "e0", "lane": "dip", "mag": None, "maglim": 20.5, "forced": True,
            "detected": False, "flux": 12.0, "flux_err": 200.0},
           {"mjd": 60499.2, "exposure_id": "e1", "lane": "dip", "mag": 18.9, "mag_err": 0.08, "maglim": 20.4,
            "forced": False, "detected": True, "sign": 1}]
    cutouts = {k: make_cutout(data, header, X, Y, SIZE) for k in ("science", "template", "difference")}
    meta = {"exposure_id": "ast3_20240716_F01_0003", "lane": "dip", "mjd": 60500.1, "field_id": "F01",
            "model_version": "rb-1", "metrics": {"maglim": 20.6, "fwhm_px": 2.9, "zp": 27.1},
            "stage_versions": {"detect": "1", "classify": "1"}, "gw_event": "S240116o", "gw_prob": 0.0017}
    return build_alert(cand, prv, cand, cutouts, meta)


def _expected_alerts(folder):
    """Alerts per survey counted without our reader: survey from the folder, records per container."""
    import struct
    import tarfile

    import pyarrow.parquet as pq

    def n_avro(data: bytes) -> int:
        if data[:4] == b"Obj\x01":
            return sum(1 for _ in fastavro.reader(io.BytesIO(data)))
        assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == 900   # Kafka wire framing, Rubin v9.0
        return 1

    expected = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        parts = path.relative_to(folder).parts
        survey = parts[1] if parts[0] == "more" else parts[0]
        if survey == "multi":
            survey = {"lsst": "rubin"}.get(parts[-2], parts[-2])
        if path.name.endswith(".avro"):
            n = n_avro(path.read_bytes())
        elif path.name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                n = sum(n_avro(tar.extractfile(m).read()) for m in tar if m.name.endswith(".avro"))
        elif path.name.endswith(".parquet"):
            t = pq.read_table(path)
            col = next((c for c in ("candidate", "diaSource") if c in t.schema.names), None)
            n = 0 if col is None else t.num_rows - t.column(col).null_count
        else:
            continue
        expected[survey] = expected.get(survey, 0) + n
    return expected


def test_every_real_alert_reads_through_our_reader(shared_data):
    """Every container present (Avro files, Spark folders, Parquet, tar.gz, Kafka wire framing)."""
    from ast3stream.alerts.reader import stamp_triplet

    folder = shared_data / "alerts"
    expected = _expected_alerts(folder)
    views = list(read_alerts(folder))
    got = {s: sum(v.survey == s for v in views) for s in expected}
    assert got == expected and len(views) == sum(expected.values())
    assert got["ztf"] >= 900 and got["pgir"] == 17 and got["winter"] == 11 and got["rubin"] == 33
    assert got["atlas"] == 12 and got["decam"] == 1
    for v in views:
        assert 0 <= v.ra < 360 and -90 <= v.dec <= 90 and 50000 < v.mjd < 70000
    stamp, _ = read_cutout(views[0].cutouts["difference"])
    assert stamp.ndim == 2 and min(stamp.shape) >= 60
    ztf = [v for v in views if v.survey == "ztf"]
    assert sum(set(v.cutouts) == {"science", "template", "difference"} for v in ztf) >= 0.99 * len(ztf)
    assert all(v.filter in ("ztfg", "ztfr", "ztfi") for v in ztf)
    assert sum(v.score is not None for v in ztf) == len(ztf) and all("rb" in v.scores for v in ztf)
    asteroids = [v for v in ztf if v.ssnamenr]
    assert asteroids and not any(AlertFilter(not_asteroid=True)(v) for v in asteroids if v.ss_sep_arcsec < 10)
    # real light curves: ZTF upper limits have no magnitude but a limiting magnitude (a few shallow ones)
    limits = [p["maglim"] for v in ztf for p in v.history if p["mag"] is None]
    assert limits and all(m is None or m > 10 for m in limits) and np.mean([m > 15 for m in limits if m]) > 0.99
    # Rubin: reliability, the frame PSF from the alert, the difference's sigma map from its UNCERT HDU
    rubin = [v for v in views if v.survey == "rubin"]
    assert all(0 <= v.scores["reliability"] <= 1 for v in rubin)
    wire = next(v for v in rubin if v.candid == 7912941781254298)
    assert abs(wire.mjd - 60961.23) < 0.01 and abs(wire.scores["reliability"] - 0.11) < 0.01
    for v in rubin:
        t = stamp_triplet(v)
        assert t.sigma is not None and t.sigma.shape == t.difference.shape and np.nanmedian(t.sigma) > 0
        assert 2 < t.fwhm_px < 8 and t.pixel_scale == 0.2
    t = stamp_triplet(next(v for v in views if v.survey == "atlas"))
    assert t.template is None and t.difference.shape == (61, 61)


def test_our_alert_is_read_by_plain_fastavro_with_only_the_avsc(alert, tmp_path):
    path = write_avro_file([alert, alert], tmp_path / "alerts.avro")
    top = schema_path("2.0")
    assert top.parent.parent == SCHEMA_DIR
    schema = fastavro.schema.load_schema(str(top))            # only the .avsc files
    with open(path, "rb") as fh:
        records = list(fastavro.reader(fh, reader_schema=schema))
    assert len(records) == 2 and records[0] == alert
    # the Kafka message: 5-byte Confluent frame + schemaless Avro, also readable with only the .avsc
    msg = encode(alert)
    assert msg[0] == 0 and int.from_bytes(msg[1:5], "big") == 200
    assert fastavro.schemaless_reader(io.BytesIO(msg[5:]), schema, None) == alert
    assert decode(msg) == alert and read_avro_file(path)[1] == alert


def ztf_consumer(value: bytes) -> dict:
    """What a ZTF-style consumer (ALeRCE, SkyPortal ingestion) does with a message: plain
    fastavro on the bytes, ZTF field names, the stamp as gzipped FITS."""
    packet = next(fastavro.reader(io.BytesIO(value)))
    c = packet["candidate"]
    with fits.open(io.BytesIO(gzip.decompress(packet["cutoutDifference"]["stampData"]))) as hdul:
        shape = hdul[0].data.shape
    return {"objectId": packet["objectId"], "candid": packet["candid"], "mjd": c["jd"] - 2400000.5,
            "mag": c["magpsf"], "err": c["sigmapsf"], "fid": c["fid"], "positive": c["isdiffpos"] == "t",
            "drb": c["drb"], "asteroid": c["ssnamenr"] is not None, "stamp": shape}


def test_container_framing_is_what_ztf_consumers_read(alert):
    value = AlertWire("ast3", framing="container").encode(alert, "alerts")
    got = ztf_consumer(value)
    assert got == {"objectId": "A3deadbeef00", "candid": alert["candid"], "mjd": pytest.approx(60500.1),
                   "mag": pytest.approx(18.3), "err": pytest.approx(0.05), "fid": 1, "positive": True,
                   "drb": pytest.approx(0.93), "asteroid": False, "stamp": (SIZE, SIZE)}
    assert decode(value) == alert


def test_fields_named_as_ztf_have_ztf_types(alert, shared_data):
    """Every field that shares a name with ZTF's schema has a type ZTF's readers accept: our
    packet resolves to a reader schema whose common fields carry ZTF's own type definitions."""
    ztf = {name: {f["name"]: f for f in json.loads((shared_data / "schemas" / "ztf" / f"{name}.avsc").read_text())["fields"]}
           for name in ("candidate", "prv_candidate", "cutout")}
    reader = copy.deepcopy(raw_schema("2.0"))
    common = {}
    for field in reader["fields"]:
        types = field["type"] if isinstance(field["type"], list) else [field["type"]]
        for t in types:
            if isinstance(t, dict) and t.get("type") == "array":
                t = t["items"]
            name = t.get("name", "").split(".")[-1] if isinstance(t, dict) else None
            if name in ztf:
                t["fields"] = [ztf[name][f["name"]] for f in t["fields"] if f["name"] in ztf[name]]
                common[name] = [f["name"] for f in t["fields"]]
    assert {"jd", "fid", "candid", "isdiffpos", "ra", "dec", "magpsf", "sigmapsf", "diffmaglim", "drb",
            "drbversion", "ssnamenr", "ssdistnr", "ssmagnr", "ndethist", "jdstarthist", "magzpsci"} <= set(common["candidate"])
    assert {"jd", "fid", "magpsf", "diffmaglim", "isdiffpos"} <= set(common["prv_candidate"])
    got = fastavro.schemaless_reader(io.BytesIO(encode(alert)[5:]), load_schema("2.0"), fastavro.parse_schema(reader))
    assert got["candidate"] == {k: alert["candidate"][k] for k in common["candidate"]}
    assert got["prv_candidates"][1]["magpsf"] == alert["prv_candidates"][1]["magpsf"]


def test_registry_ids_and_a_confluent_deserializer(alert):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    with Registry() as reg:
        reg.register("other-value", json.dumps({"type": "string"}))
        client = SchemaRegistry(reg.url)
        wire = AlertWire("ast3", registry=client)
        value = wire.encode(alert, "alerts")
        sid = int.from_bytes(value[1:5], "big")
        assert sid == 2 and reg.subjects == {"other-value": [1], "ast3.alerts-value": [2]}
        assert wire.encode(alert, "alerts.dip")[1:5] == value[1:5]     # same schema, same id
        assert decode(value, registry=client) == alert
        with pytest.raises(MalformedMessage, match="schema id 2"):
            decode(value)                                               # no registry: says which id
        deserialize = AvroDeserializer(SchemaRegistryClient({"url": reg.url}))
        got = deserialize(value, SerializationContext("ast3.alerts", MessageField.VALUE))
        assert got["candid"] == alert["candid"] and got["candidate"] == alert["candidate"]
        assert got["cutoutScience"]["stampData"] == alert["cutoutScience"]["stampData"]
    assert AlertWire("ast3").encode(alert, "alerts")[1:5] == (200).to_bytes(4, "big")   # embedded id


def test_registry_credentials_are_sent_and_never_echoed():
    with Registry(username="alice", password="s3cret-pw") as reg:
        assert SchemaRegistry(reg.url, username="alice", password="s3cret-pw").register("a-value", raw_schema("2.0")) == 1
        with pytest.raises(RegistryError, match="HTTP 401") as err:
            SchemaRegistry(reg.url, username="alice", password="wrong-pw").schema(1)
        assert "wrong-pw" not in str(err.value)


def test_a_wire_framed_rubin_alert_decodes_via_the_registry(shared_data):
    """The real Rubin alert in Confluent framing (schema id 900 = lsst v9.0, whose wire layout is
    v10.0's: the v10.0 schema from ../shared consumes exactly its bytes)."""
    data = (shared_data / "alerts/more/multi/boom/tests/data/alerts/lsst/7912941781254298.avro").read_bytes()
    rubin = fastavro.schema.load_schema(str(shared_data / "schemas/rubin/10/0/lsst.v10_0.alert.avsc"), _write_hint=False)
    with Registry() as reg:
        reg.register("lsst-alerts-value", json.dumps(rubin), schema_id=900)
        writer, record = read_message(data, registry=SchemaRegistry(reg.url))
    assert writer["name"] == "lsst.v10_0.alert"
    src = record["diaSource"]
    assert (src["diaSourceId"], src["band"]) == (7912941781254298, "r") and src["midpointMjdTai"] == pytest.approx(60961.233, abs=1e-3)
    local = read_message(data, schemas={900: rubin})[1]                        # a local schema store
    assert local["diaSource"]["diaSourceId"] == src["diaSourceId"] and local["cutoutDifference"] == record["cutoutDifference"]
    with pytest.raises(MalformedMessage, match="schema id 900.*no registry"):
        read_message(data)
    with pytest.raises(MalformedMessage, match="not an ast3stream alert.*lsst"):
        decode_with(data, rubin)


def test_every_rubin_schema_round_trips_its_sample_through_the_registry(shared_data):
    """Each Rubin schema in ../shared registered, its sample record framed with the registry's
    id, and read back by id (and as a container); the samples' own fakeAlert.avro read too."""
    tops = sorted((shared_data / "schemas" / "rubin").glob("*/*/lsst.v*.alert.avsc"))
    assert {t.parent.parent.name for t in tops} == {"7", "10", "11"}
    with Registry() as reg:
        client = SchemaRegistry(reg.url)
        for top in tops:
            schema = fastavro.schema.load_schema(str(top), _write_hint=False)
            sample = json.loads((top.parent / "sample_data" / "alert.json").read_text())
            sid = client.register(f"lsst-{top.parent.parent.name}-value", schema)
            buf = io.BytesIO()
            buf.write(b"\x00" + sid.to_bytes(4, "big"))
            fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), sample)
            writer, back = read_message(buf.getvalue(), registry=client)
            assert writer["name"] == schema["name"]
            common = {k: v for k, v in sample["diaSource"].items() if k in back["diaSource"]}
            assert len(common) > 10
            assert all(back["diaSource"][k] == (pytest.approx(v, rel=1e-6) if isinstance(v, float) else v)
                       for k, v in common.items())
            container = io.BytesIO()
            fastavro.writer(container, fastavro.parse_schema(schema), [sample])
            assert read_message(container.getvalue())[1]["diaSource"]["diaSourceId"] == sample["diaSource"]["diaSourceId"]
            with open(top.parent / "sample_data" / "fakeAlert.avro", "rb") as fh:
                assert read_message(fh.read())[1]["diaSource"]["diaSourceId"] > 0
        assert len({client.latest(f"lsst-{t.parent.parent.name}-value")[0] for t in tops}) == 3


def decode_with(data: bytes, schema: dict) -> dict:
    """decode() through a registry that knows the writer: a foreign alert is refused by name."""
    with Registry() as reg:
        reg.register("x-value", json.dumps(schema), schema_id=900)
        return decode(data, registry=SchemaRegistry(reg.url))


def test_alert_content(alert, image):
    c, x = alert["candidate"], alert["crossmatch"]
    assert alert["objectId"] == "A3deadbeef00" and alert["alertId"] == c["candid"] > 0
    assert alert["candid"] == c["candid"] and c["jd"] == pytest.approx(60500.1 + 2400000.5)
    assert c["isdiffpos"] == "t" and c["drb"] == pytest.approx(0.93) and c["diffmaglim"] == pytest.approx(20.6)
    assert c["fwhm_image"] == pytest.approx(2.9) and c["lane"] == "dip" and c["drbversion"] == "rb-1"
    assert (c["band"], c["fid"]) == ("g", 1) and c["magpsf"] == pytest.approx(18.3) and c["magzpsci"] == pytest.approx(27.1)
    assert c["ssnamenr"] is None and c["ssmagnr"] is None and (c["xpos"], c["ypos"]) == pytest.approx((X, Y))
    assert x["host_id"] == "43495"
    assert x["gw_event"] == "S240116o" and x["gw_field_prob"] == pytest.approx(0.0017)
    assert alert["versions"] == {"detect": "1", "classify": "1"}
    limit, det = alert["prv_candidates"]
    assert limit["magpsf"] is None and limit["diffmaglim"] == pytest.approx(20.5) and not limit["detected"]
    assert det["isdiffpos"] == "t" and det["magpsf"] == pytest.approx(18.9) and det["fid"] == 1


def test_cutouts_decode_to_fits_with_wcs(alert, image):
    data, header, w = image
    stamp, hdr = read_cutout(alert["cutoutScience"]["stampData"])
    assert stamp.shape == (SIZE, SIZE)
    iy, ix = np.unravel_index(np.argmax(stamp), stamp.shape)
    assert (ix, iy) == (SIZE // 2, SIZE // 2)                  # the star is at the centre
    ra, dec = w.pixel_to_world_values(X, Y)
    cx, cy = WCS(hdr).world_to_pixel_values(ra, dec)           # the stamp's own WCS
    assert cx - SIZE // 2 == pytest.approx(X - round(X), abs=1e-6)
    assert cy - SIZE // 2 == pytest.approx(Y - round(Y), abs=1e-6)
    assert hdr["MJD-OBS"] == 60500.1
    with fits.open(io.BytesIO(gzip.decompress(alert["cutoutDifference"]["stampData"]))) as hdul:
        assert WCS(hdul[0].header).has_celestial
    edge, _ = read_cutout(make_cutout(data, header, 2.0, 3.0, SIZE))       # partly off the image
    assert edge.shape == (SIZE, SIZE) and np.isnan(edge[0, 0]) and np.isfinite(edge[-1, -1])
    assert make_cutout(data, header, X, Y, SIZE) == make_cutout(data, header, X, Y, SIZE)   # deterministic


def test_packet_digest_covers_content_not_framing_or_timing(alert):
    from ast3stream.alerts import packet_digest

    timed = copy.deepcopy(alert)
    timed["timing"] = {"file_closed_at": 1.7e9, "alert_built_at": 1.7e9 + 25.0, "latency_s": 25.0}
    assert decode(encode(timed, framing="container"))["timing"]["latency_s"] == 25.0
    assert packet_digest(timed) == packet_digest(alert) == packet_digest(decode(encode(alert, framing="container")))
    other = copy.deepcopy(alert)
    other["candidate"]["magpsf"] += 0.5
    assert packet_digest(other) != packet_digest(alert)


def test_alert_ids_are_deterministic():
    a = alert_id("exp1", "qip", 3, {"detect": "1", "classify": "1"})
    assert a == alert_id("exp1", "qip", 3, {"classify": "1", "detect": "1"})
    assert 0 <= a < 2**63
    assert a != alert_id("exp1", "qip", 3, {"detect": "1", "classify": "2"})
    assert a != alert_id("exp1", "dip", 3, {"detect": "1", "classify": "1"})
    assert alert_id("e", "dip", (10.001, 5.0)) == alert_id("e", "dip", (10.0, 5.0))


def test_decode_rejects_what_is_not_an_alert(alert):
    msg = encode(alert)
    for bad in (b"", b"A3\x01xxxx", b"\x00\x00\x00\x03\xe7" + msg[5:], msg[:-7], msg + b"\x00"):
        with pytest.raises(MalformedMessage):
            decode(bad)


def test_minor_versions_read_each_other(alert):
    """Compatible evolution: a 2.1 that adds a defaulted field reads 2.0 data, and 2.0 reads 2.1 data."""
    newer = copy.deepcopy(fastavro.schema.load_schema(str(schema_path("2.0"))))
    cand = next(f["type"] for f in newer["fields"] if f["name"] == "candidate")
    cand["fields"].append({"name": "new_thing", "type": ["null", "float"], "default": None})
    newer, older = fastavro.parse_schema(newer), load_schema("2.0")
    got = fastavro.schemaless_reader(io.BytesIO(encode(alert)[5:]), older, newer)
    assert got["candidate"]["new_thing"] is None and got["candidate"]["magpsf"] == alert["candidate"]["magpsf"]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, newer, {**got, "candidate": {**got["candidate"], "new_thing": 1.5}})
    back = fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), newer, older)
    assert back == alert


def test_filters(alert):
    assert AlertFilter(min_score=0.9, max_mag=19, has_host=True, in_gw_field=True, not_asteroid=True)(alert)
    assert not AlertFilter(min_score=0.95)(alert)
    assert not AlertFilter(max_mag=18.0)(alert)
    assert not AlertFilter(has_host=False)(alert)
    rock = copy.deepcopy(alert)
    rock["candidate"].update(ssnamenr="1234", ssdistnr=2.0)
    rock["crossmatch"]["gw_event"] = None
    assert not AlertFilter(not_asteroid=True)(rock) and not AlertFilter(in_gw_field=True)(rock)
    assert AlertFilter(in_gw_field=False)(rock)


def test_output_formats(alert, tmp_path):
    assert len(table_row(alert)) == len(table_header())
    assert "A3deadbeef00" in table_row(alert) and "S240116o" in table_row(alert)
    record = json.loads(to_json(alert))
    assert record["alertId"] == alert["alertId"] and record["cutoutScience"]["stampData"] is None
    assert len(json.loads(to_json(alert, cutouts=True))["cutoutScience"]["stampData"]) > 100
    paths = write_files(alert, tmp_path)
    assert [p.suffix for p in paths] == [".json", ".png", ".png", ".png"]
    png = matplotlib.image.imread(paths[1])
    assert png.shape[:2] == (SIZE, SIZE)
    assert view(json.loads(paths[0].read_text())).candid == alert["alertId"]


@pytest.mark.broker
def test_listen_through_the_embedded_broker(alert, broker, tmp_path, capsys):
    from aiokafka import AIOKafkaProducer

    from agents.broker import ensure_topics_sync
    from agents.listen import listen

    topic = "listen-test.alerts"
    ensure_topics_sync(broker.bootstrap, [topic])
    faint = copy.deepcopy(alert)
    faint["candidate"]["drb"] = 0.1
    faint["alertId"] = faint["candidate"]["candid"] = 42
    traversing = copy.deepcopy(faint)   # a foreign alert whose objectId would name a folder outside
    traversing["objectId"] = "../../escape"
    traversing["alertId"] = traversing["candidate"]["candid"] = 43

    async def produce():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for value in (encode(traversing), encode(alert), b"not an alert", encode(faint),
                          encode(alert, framing="container")):
                await producer.send_and_wait(topic, value, key=b"A3deadbeef00")
        finally:
            await producer.stop()

    asyncio.run(produce())
    out = io.StringIO()
    n = asyncio.run(listen(broker.bootstrap, [topic], alert_filter=AlertFilter(min_score=0.5), fmt="json",
                           max_alerts=3, stream=out, from_beginning=True, timeout_s=2.0))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert n == 2 and [r["alertId"] for r in lines] == [alert["alertId"]] * 2
    out_dir = tmp_path / "a" / "out"
    n = asyncio.run(listen(broker.bootstrap, [topic], fmt="files", out=out_dir, max_alerts=1,
                           stream=io.StringIO(), from_beginning=True, timeout_s=5.0, group="g1"))
    assert n == 1 and len(list((out_dir / "A3deadbeef00").glob("*.png"))) == 3
    assert [p.name for p in out_dir.iterdir()] == ["A3deadbeef00"] and not list(tmp_path.rglob("escape"))
    assert "skipped alert 43" in capsys.readouterr().err


def test_the_chain_frames_each_topic_with_registry_ids(night_settings, small_night):
    """A simulated exposure through the real chain (in process): ``alerts`` and ``candidates``
    carry the registry's schema id, ``alerts.dip`` (configured ``container``) one Avro container per
    message that plain fastavro reads; the database digest is the packet's content digest."""
    from agents.chain import Resources, process_exposure
    from ast3stream.alerts import packet_digest

    with Registry() as reg:
        reg.register("unrelated-value", json.dumps({"type": "string"}))
        cfg = night_settings("framing", alerts={"registry_url": reg.url, "topic_framing": {"alerts.dip": "container"}})
        res = Resources(cfg)
        messages = [m for exp in small_night[1].exposures[:2] for m in process_exposure(exp.path, res)]
        by_topic: dict[str, list[bytes]] = {}
        for name, _, value in messages:
            by_topic.setdefault(name, []).append(value)
        assert by_topic["alerts"] and len(by_topic["alerts"]) == len(by_topic["alerts.dip"])
        assert {int.from_bytes(v[1:5], "big") for v in by_topic["alerts"] + by_topic["candidates"]} == {2}
        assert set(reg.subjects) == {"unrelated-value", f"{cfg.kafka.prefix}.alerts-value",
                                     f"{cfg.kafka.prefix}.candidates-value"}
        client = SchemaRegistry(reg.url)
        framed = [decode(v, registry=client) for v in by_topic["alerts"]]
        plain = [next(fastavro.reader(io.BytesIO(v))) for v in by_topic["alerts.dip"]]
        assert [a["candid"] for a in framed] == [a["candid"] for a in plain]
        assert framed == [decode(v) for v in by_topic["alerts.dip"]]
    digests = {r["alert_id"]: r["digest"] for r in res.db.rows("alerts")}
    assert digests == {str(a["alertId"]): packet_digest(a) for a in framed}
