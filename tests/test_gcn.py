"""GCN-style optical-counterpart notices: built from our alerts, valid against our JSON
schema and against GCN's own optical alert schema (gcn/notices/boom); bad notices fail."""
from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest
from astropy.time import Time
from astropy_healpix import HEALPix, uniq_to_level_ipix

from ast3stream.alerts import build_alert
from ast3stream.alerts.gcn import build_notice, notice_filter, notice_schema, validate_notice
from ast3stream.gw import read_notice

CREATED = Time("2026-06-05T12:30:00", scale="utc")


@pytest.fixture(scope="module")
def alert():
    cand = {"x": 10.0, "y": 12.0, "ra": 307.86, "dec": 8.76, "mag": 19.2, "mag_err": 0.07, "snr": 15.0,
            "sign": 1, "rb": np.float32(0.91), "object_id": "A3c0ffee0001", "host_id": "12345",
            "host_sep_arcsec": 3.5, "host_dist_mpc": 160.0, "ssnamenr": None}
    prv = [{"mjd": 60831.40, "exposure_id": "e0", "mag": None, "maglim": 20.8, "detected": False},
           {"mjd": 60831.45, "exposure_id": "e1", "mag": 19.5, "mag_err": 0.1, "maglim": 20.7}]
    meta = {"exposure_id": "e2", "lane": "qip", "mjd": 60831.5, "exptime": 60.0, "ndethist": 2,
            "metrics": {"maglim": 20.6}, "gw_event": "MS260605l", "gw_prob": 0.3,
            "gw_probdensity": 0.05, "gw_credible_level": 0.2}
    return build_alert(cand, prv, cand, {}, meta)


@pytest.fixture(scope="module")
def gw(shared_data):
    return read_notice(shared_data / "gw" / "skyportal" / "igwn_gwalert_preliminary.json")


def test_notice_is_valid_and_carries_the_candidate(alert, gw):
    notice = build_notice(alert, gw, created=CREATED)
    validate_notice(notice)
    assert notice["alert_datetime"] == "2026-06-05T12:30:00.000Z" and notice["alert_type"] == "subsequent"
    target = notice["data"]["targets"][0]
    assert target["event_name"] == "A3c0ffee0001" and target["id"] == str(alert["alertId"])
    assert target["ra"] == pytest.approx(307.86) and target["classification_scores"]["real"] == pytest.approx(0.91)
    assert target["gcn_crossmatch"] == [{"ref_type": "GW", "ref_instrument": "LVK", "ref_ID": "MS260605l",
                                         "reference": {"gcn.notices.LVK.alert": "MS260605l-preliminary"}}]
    assert target["host_galaxy"] == {"id": "12345", "separation_arcsec": 3.5, "distance_mpc": 160.0}
    assert target["gw_field_prob"] == pytest.approx(0.3)
    phot = notice["data"]["photometry"]
    assert [("mag" in p, "limiting_mag" in p) for p in phot] == [(False, True), (True, True), (True, True)]
    assert phot[-1]["observation_start"] == "2025-06-05T11:59:30.000Z"     # mid-exposure MJD - 30 s
    json.dumps(notice)


def test_notice_from_a_stored_too_row_or_an_id(alert):
    row = {"event_id": "S240116o", "field_id": "00012", "prob": 0.0017, "rank": 1}
    for gw_event in (row, "S240116o"):
        notice = build_notice(alert, gw_event, created=CREATED)
        validate_notice(notice)
        assert notice["data"]["targets"][0]["gcn_crossmatch"][0]["ref_ID"] == "S240116o"


@pytest.fixture(scope="module")
def boom(shared_data):
    """GCN's optical alert schema (gcn/notices/boom), its relative $refs resolved from the shared copy."""
    from referencing import Registry, Resource

    root = shared_data / "schemas" / "gcn" / "gcn" / "notices"
    resources = []
    for path in root.rglob("*.schema.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry = Registry().with_resources(resources)
    schema = json.loads((root / "boom" / "alert.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    validator.validate(json.loads((root / "boom" / "alert.example.json").read_text()))
    return validator


def test_our_notices_are_valid_gcn_optical_alert_notices(alert, gw, boom):
    boom.validate(build_notice(alert, gw, created=CREATED))


@pytest.mark.parametrize("breakage", ["no_ra", "messenger", "no_mag_or_limit", "extra_key", "bad_time", "no_gw"])
def test_invalid_notices_fail(alert, gw, breakage):
    notice = copy.deepcopy(build_notice(alert, gw, created=CREATED))
    target, phot = notice["data"]["targets"][0], notice["data"]["photometry"]
    if breakage == "no_ra":
        del target["ra"]
    elif breakage == "messenger":
        notice["messenger"] = "GW"
    elif breakage == "no_mag_or_limit":
        for key in ("mag", "mag_error", "limiting_mag", "limiting_mag_sigma"):
            phot[1].pop(key, None)
    elif breakage == "extra_key":
        notice["kafka_offset"] = 3
    elif breakage == "bad_time":
        notice["alert_datetime"] = "yesterday"
    else:
        target["gcn_crossmatch"] = []
    with pytest.raises(jsonschema.ValidationError):
        validate_notice(notice)


def test_which_alerts_get_a_notice(alert):
    keep = notice_filter(0.8)
    assert keep(alert)
    low = copy.deepcopy(alert)
    low["candidate"]["drb"] = 0.5
    rock = copy.deepcopy(alert)
    rock["candidate"].update(ssnamenr="433", ssdistnr=1.0)
    outside = copy.deepcopy(alert)
    outside["crossmatch"]["gw_event"] = None
    assert not any(keep(a) for a in (low, rock, outside))
    unscored = copy.deepcopy(alert)
    unscored["candidate"]["drb"] = None
    with pytest.raises(ValueError):
        build_notice(unscored, "S1")
    assert notice_schema()["$id"] == build_notice(alert, "S1", created=CREATED)["$schema"]


def test_kilonova_assessment_in_the_notice(gw, boom, tmp_path):
    """A candidate at the densest pixel of the mock BNS map with a host at the map's distance there
    scores high, with its reasons; the same with a host at 5x the distance is vetoed. The stored
    map of a ToO row gives the same assessment as the notice's own map; the notices are valid
    against our schema and GCN's."""
    from ast3stream.config import GWConfig
    from ast3stream.gw.skymap import rows_at, write_skymap

    sky = gw.skymap
    best = int(np.argmax(sky["PROBDENSITY"]))
    level, ipix = uniq_to_level_ipix(int(sky["UNIQ"][best]))
    lon, lat = HEALPix(2**int(level), order="nested").healpix_to_lonlat(int(ipix))
    ra, dec = float(lon.deg), float(lat.deg)
    row = rows_at(sky, ra, dec)[0]
    mu = float(sky["DISTMU"][row])
    notices = {}
    for name, dist in (("near", mu), ("far", 5 * mu)):
        cand = {"x": 10.0, "y": 12.0, "ra": ra, "dec": dec, "mag": 19.2, "mag_err": 0.07, "snr": 15.0, "sign": 1,
                "rb": np.float32(0.91), "object_id": "A3c0ffee0002", "host_id": "777", "host_sep_arcsec": 2.0,
                "host_dist_mpc": dist, "ssnamenr": None}
        prv = [{"mjd": 60831.0, "exposure_id": "e1", "mag": 18.7, "mag_err": 0.1, "maglim": 20.7}]
        meta = {"exposure_id": "e2", "lane": "qip", "mjd": 60831.5, "exptime": 60.0, "ndethist": 2, "gw_event": "MS260605l"}
        packet = build_alert(cand, prv, cand, {}, meta)
        notices[name] = build_notice(packet, gw, created=CREATED, gw=GWConfig())
        validate_notice(notices[name])
        boom.validate(notices[name])
    near = notices["near"]["data"]["targets"][0]
    ref = near["gcn_crossmatch"][0]["reference"]
    assert near["classification_scores"]["kilonova"] == pytest.approx(ref["kilonova_score"], abs=1e-4)
    assert near["classification_scores"]["kilonova"] > 0.8 and near["gw_credible_level"] < 0.01
    assert "inside the 90% region" in ref["kilonova_reasons"] and "0.0 sigma from the map's" in ref["kilonova_reasons"]
    assert "fading 1.00 mag/day (kilonova-like)" in ref["kilonova_reasons"]
    far = notices["far"]["data"]["targets"][0]
    assert far["classification_scores"]["kilonova"] == 0 and "(inconsistent)" in \
        far["gcn_crossmatch"][0]["reference"]["kilonova_reasons"]
    stored = {"event_id": "MS260605l", "field_id": "1", "prob": 0.1, "alert_type": "PRELIMINARY",
              "skymap_path": str(write_skymap(sky, tmp_path / "m.multiorder.fits"))}
    again = build_notice(packet, stored, created=CREATED, gw=GWConfig())
    assert again["data"]["targets"][0]["gcn_crossmatch"][0]["reference"] == \
        notices["far"]["data"]["targets"][0]["gcn_crossmatch"][0]["reference"]
