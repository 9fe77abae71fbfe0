"""GW ToO: LVK notices (JSON with base64 multi-order map, VOEvent with a local map file),
retractions, per-field enclosed probability checked against a direct HEALPix sum, galaxy
weighting, ranked plan and its plot, and the ``too`` command against the database."""
from __future__ import annotations

import shutil

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS
from astropy_healpix import HEALPix, uniq_to_level_ipix

from ast3stream.gw import (credible_area, credible_level_at, field_probabilities, make_grid, plot_plan,
                           probdensity_at, read_notice, too_fields)
from agents.db import Database
from ast3stream.config import GWConfig, Settings
from ast3stream.gw.skymap import probabilities

W, H = 14206 * 0.41 / 3600, 10654 * 0.41 / 3600      # AST3-3 field [deg]


@pytest.fixture(scope="module")
def s240116o(shared_data):
    return read_notice(shared_data / "gw" / "lvk" / "S240116o-preliminary_fink-modified-times.json")


def test_lvk_json_notice(s240116o):
    n = s240116o
    assert (n.superevent_id, n.alert_type, n.is_retraction) == ("S240116o", "PRELIMINARY", False)
    assert n.far == pytest.approx(2.097781e-06) and n.instruments == ["H1", "L1"] and n.pipeline == "MBTA"
    assert n.classification["Terrestrial"] == pytest.approx(0.808035228)
    assert len(n.skymap) == 19200 and probabilities(n.skymap).sum() == pytest.approx(1.0, abs=1e-9)
    assert set(n.skymap.colnames) >= {"UNIQ", "PROBDENSITY", "DISTMU", "DISTSIGMA", "DISTNORM"}


def test_retraction(shared_data):
    n = read_notice((shared_data / "gw" / "skyportal" / "igwn_gwalert_retraction.json").read_bytes())
    assert n.is_retraction and n.superevent_id == "MS260605l" and n.skymap is None
    with pytest.raises(ValueError, match="retraction"):
        too_fields(n, make_grid(W, H, 0, 10), GWConfig(), W, H)


def test_voevent_with_local_skymap(shared_data, tmp_path):
    voevent = shared_data / "gw" / "skyportal" / "GW190425_initial.xml"
    n = read_notice(voevent)            # Skymap URL 'skyportal/tests/data/bayestar.fits.gz' -> local file by name
    assert (n.superevent_id, n.alert_type) == ("S190425z", "INITIAL")
    assert n.skymap_url.endswith("bayestar.fits.gz") and n.skymap_path.name == "bayestar.fits.gz"
    assert n.classification["BNS"] == pytest.approx(0.999402567114) and n.instruments == ["L1", "V1"]
    assert len(n.skymap) == 12 * 256**2 and probabilities(n.skymap).sum() == pytest.approx(1.0, abs=1e-9)
    # the published 90 % area of the GW190425 BAYESTAR initial map: 10,183 deg^2 (GCN 24168)
    assert credible_area(n.skymap, 0.9) == pytest.approx(10183, rel=2e-3)
    # flat NESTED map read as multi-order: density at a pixel centre equals PROB / pixel area
    hp = HEALPix(256, order="nested")
    prob = Table.read(shared_data / "gw" / "skyportal" / "bayestar.fits.gz")["PROB"]
    i = int(np.argmax(prob))
    lon, lat = hp.healpix_to_lonlat(i)
    dens = probdensity_at(n.skymap, lon.deg, lat.deg)[0]
    assert dens == pytest.approx(prob[i] / hp.pixel_area.to_value(u.deg**2), rel=1e-9)
    shutil.copy(voevent, tmp_path / voevent.name)
    assert read_notice(tmp_path / voevent.name).skymap is None       # never downloaded


def _flat(skymap, order):
    """Independent rasterisation: density of every NESTED pixel of ``order``."""
    level, ipix = uniq_to_level_ipix(np.asarray(skymap["UNIQ"]))
    n = 4 ** (order - level)
    flat = np.zeros(12 * 4**order)
    for lo, k, d in zip(ipix * n, n, np.asarray(skymap["PROBDENSITY"])):
        flat[lo:lo + k] = d
    return flat


def _direct(flat, order, field):
    """Pixels whose centres fall inside the field, by a TAN WCS (astropy) on a cone search."""
    hp = HEALPix(2**order, order="nested")
    pix = hp.cone_search_lonlat(field["ra"] * u.deg, field["dec"] * u.deg, 1.2 * u.deg)
    lon, lat = hp.healpix_to_lonlat(pix)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [field["ra"], field["dec"]]
    w.wcs.crpix = [1, 1]         # FITS 1-based: pixel 0 (origin=0) is the tangent point
    w.wcs.cdelt = [1, 1]        # pixel coordinates = standard coordinates in degrees
    xi, eta = w.wcs_world2pix(lon.deg, lat.deg, 0)
    return pix[(np.abs(xi) <= W / 2) & (np.abs(eta) <= H / 2)]


def test_field_probabilities_match_a_direct_healpix_sum(s240116o):
    """S240116o on a disjoint AST3-3 grid over the map's northern lobe: each field's probability
    equals the direct sum over its pixels; the fields sum to the probability inside the grid."""
    grid = make_grid(W, H, 25, 55, disjoint=True)
    grid = grid[(grid["ra"] > 50) & (grid["ra"] < 100)]
    ranked = field_probabilities(s240116o.skymap, grid, W, H)
    order = ranked.meta["order"]
    assert order == 9
    flat = _flat(s240116o.skymap, order)
    area = 4 * np.pi / (12 * 4**order)
    pixels = {str(f["field_id"]): _direct(flat, order, f) for f in grid}
    direct = np.array([flat[pixels[str(f)]].sum() * area for f in ranked["field_id"]])
    np.testing.assert_allclose(ranked["prob"], direct, rtol=1e-9, atol=1e-15)
    union = np.unique(np.concatenate(list(pixels.values())))
    inside = flat[union].sum() * area
    assert ranked["prob"].sum() == pytest.approx(inside, rel=1e-9)
    assert ranked["cum_prob"][-1] == pytest.approx(inside, rel=1e-9)
    assert 0.1 < inside < 0.5
    # ranked: probabilities decrease, the union grows; the top fields lie in the 90 % region
    assert np.all(np.diff(ranked["prob"]) <= 0) and np.all(np.diff(ranked["cum_prob"]) >= -1e-15)
    assert np.all(credible_level_at(s240116o.skymap, ranked["ra"][:10], ranked["dec"][:10]) <= 0.9)


def test_a_covering_grid_counts_overlaps_once(s240116o):
    grid = make_grid(W, H)                                       # the whole sky, 10 % overlaps
    ranked = field_probabilities(s240116o.skymap, grid, W, H)
    assert ranked["cum_prob"][-1] == pytest.approx(1.0, abs=1e-9)   # every pixel centre is covered once
    assert ranked["prob"].sum() > 1.1                            # fields individually count the overlaps
    assert np.all(credible_level_at(s240116o.skymap, ranked["ra"][:20], ranked["dec"][:20]) <= 0.9)


def test_a_high_resolution_map_is_integrated_at_its_own_resolution(shared_data):
    n = read_notice(shared_data / "gw" / "skyportal" / "igwn_gwalert_preliminary.json")   # 8 deg^2, order 11
    level, _ = uniq_to_level_ipix(np.asarray(n.skymap["UNIQ"]))
    assert level.max() == 11
    ranked = field_probabilities(n.skymap, make_grid(W, H, -1, 19), W, H)   # a band around the event
    assert ranked["cum_prob"][-1] == pytest.approx(1.0, abs=1e-6)
    assert ranked["prob"][0] > 0.25 and credible_level_at(n.skymap, ranked["ra"][0], ranked["dec"][0])[0] < 0.5


def test_galaxy_weighting(shared_data):
    n = read_notice(shared_data / "gw" / "skyportal" / "igwn_gwalert_preliminary.json")   # 8 deg^2 BNS mock
    m = n.skymap
    best = int(np.argmax(m["PROBDENSITY"]))
    level, ipix = uniq_to_level_ipix(m["UNIQ"][best])
    lon, lat = HEALPix(2**level, order="nested").healpix_to_lonlat(ipix)
    ra0, dec0 = float(lon.deg), float(lat.deg)
    mu = float(m["DISTMU"][best])
    grid = Table({"field_id": ["on", "off"], "ra": [ra0, (ra0 + 90) % 360], "dec": [dec0, -dec0]})
    galaxies = Table({"RA": [ra0 + 0.1, ra0 - 0.1, (ra0 + 90) % 360], "DEC": [dec0, dec0, -dec0],
                      "d_L": [mu, 10 * mu, mu], "B_Abs": [-20.0, -20.0, -20.0]})
    ranked = field_probabilities(m, grid, W, H, galaxies=galaxies, rank_by="galaxy_score")
    assert list(ranked["field_id"]) == ["on", "off"]
    assert ranked["galaxy_score"][0] == pytest.approx(1.0, abs=1e-6)   # the galaxy at the right distance
    glade = Table.read(shared_data / "catalogs" / "GLADE.csv", format="ascii.csv")
    scored = field_probabilities(m, make_grid(W, H, dec0 - 5, dec0 + 5), W, H, galaxies=glade)
    assert np.all(np.isfinite(scored["galaxy_score"])) and scored["galaxy_score"].sum() <= 1 + 1e-9


def test_fresh_folder_ingest_then_an_observable_plan_for_the_night(shared_data, tmp_path, capsys):
    """The issue's first must-show: on an empty data folder, ``too ingest`` the real S240116o notice
    (written grid), then ``too plan --site yaoan --night 2024-01-16``: every visit is checked again
    here with astropy (altitude, airmass, Sun), and the plan's cumulative probability is the union."""
    import json

    from astropy.coordinates import AltAz, SkyCoord, get_sun
    from astropy.time import Time

    from ast3stream.cli import main
    from ast3stream.gw.observe import SITES

    data = tmp_path / "run"
    notice = shared_data / "gw" / "lvk" / "S240116o-preliminary_fink-modified-times.json"
    assert main(["--data-dir", str(data), "too", "ingest", str(notice), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "S240116o PRELIMINARY: fields (given by hand (not significant (FAR 66.2 per year)))" in out
    grid = Table.read(data / "fields.csv", format="ascii.csv", converters={"field_id": str})
    assert len(grid) == 26344 and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["--data-dir", str(data), "too", "plan", "--site", "yaoan", "--night", "2024-01-16"]) == 0
    assert "S240116o (PRELIMINARY): 88 visits of 44 of its 50 fields" in capsys.readouterr().out
    folder = data / "products" / "gw" / "S240116o"
    plan = json.loads((folder / "plan-S240116o-2024-01-16.json").read_text())
    assert (folder / "plan-S240116o-2024-01-16.png").stat().st_size > 20000
    assert len(Table.read(folder / "plan-S240116o-2024-01-16.csv", format="ascii.csv")) == len(plan["visits"]) == 88
    visits = plan["visits"]
    t = Time([v["mjd"] for v in visits], format="mjd")
    site = SITES["yaoan"].location
    frame = AltAz(obstime=t, location=site)
    alt = SkyCoord([v["ra"] for v in visits] * u.deg, [v["dec"] for v in visits] * u.deg).transform_to(frame).alt.deg
    assert alt.min() >= 30 and get_sun(t).transform_to(frame).alt.deg.max() <= -18
    assert plan["night_start"] <= visits[0]["start"] and visits[-1]["end"] <= plan["night_end"]
    assert all(v["airmass"] <= 2 for v in visits) and [v["order"] for v in visits] == list(range(1, 89))
    starts = [Time(v["start"]).mjd for v in visits]
    assert np.all(np.diff(starts) > 0)                                          # time-ordered, one at a time
    for f in {v["field_id"] for v in visits}:
        mine = [Time(v["start"]).mjd for v in visits if v["field_id"] == f]
        assert len(mine) == 2 and (mine[1] - mine[0]) * 1440 >= 60             # two visits an hour apart
    # the 6 fields left out are on the southern arc of the map (RA 17 h, Dec -40): never 30 deg up that night
    ranked = Database.from_settings(Settings.load(None, paths={"data_dir": data})).too_fields()
    pos = {str(f): (ra, dec) for f, ra, dec in zip(grid["field_id"], grid["ra"], grid["dec"])}
    left = [pos[r["field_id"]] for r in ranked if r["field_id"] not in {v["field_id"] for v in visits}]
    assert len(left) == 6 and all(dec < -35 for _, dec in left)
    night = Time(np.linspace(Time(plan["night_start"]).mjd, Time(plan["night_end"]).mjd, 60), format="mjd")
    up = SkyCoord([ra for ra, _ in left] * u.deg, [dec for _, dec in left] * u.deg)[:, None].transform_to(
        AltAz(obstime=night[None, :], location=site)).alt.deg
    assert up.max() < 30
    cum = [v["cum_prob"] for v in visits]
    assert np.all(np.diff(cum) >= -1e-12) and 0.055 < cum[-1] < ranked[-1]["cum_prob"] == pytest.approx(0.0682, abs=1e-4)


def test_gw_field_filter_on_real_ztf_alerts(s240116o, shared_data):
    from ast3stream.alerts import AlertFilter, read_alerts

    views = list(read_alerts(shared_data / "alerts" / "ztf"))
    inside = AlertFilter(in_gw_field=True, skymap=s240116o.skymap, credible_level=0.9)
    kept = [v for v in views if inside(v)]
    levels = credible_level_at(s240116o.skymap, [v.ra for v in views], [v.dec for v in views])
    assert len(kept) == int(np.sum(levels <= 0.9)) and 0 < len(kept) < len(views)
    assert not any(AlertFilter(in_gw_field=True)(v) for v in views)      # no ToO crossmatch in ZTF alerts


def test_plot_plan(s240116o, tmp_path):
    grid = make_grid(W, H, 20, 60)
    ranked = field_probabilities(s240116o.skymap, grid, W, H)[:30]
    path = plot_plan(ranked, tmp_path / "plan.png", s240116o.skymap, title="S240116o")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 20000



def test_coverage_by_depth_and_kilonova_ranking(s240116o):
    """Exposures of the top fields at three depths: the covered probability is the union of their
    footprints (the ranked list's cum_prob), deeper cuts cover less; candidates in those fields are
    ranked with their reasons, the asteroid, the variable star and the bogus one vetoed, and the one outside the 90 %
    region is not listed."""
    from ast3stream.gw.coverage import coverage_report, summary

    ranked = field_probabilities(s240116o.skymap, make_grid(W, H, 20, 60), W, H)[:6]
    exposures = Table({"exposure_id": [f"e{i}" for i in range(7)],
                       "field_id": [*ranked["field_id"], ranked["field_id"][0]],
                       "ra": [*ranked["ra"], ranked["ra"][0]], "dec": [*ranked["dec"], ranked["dec"][0]],
                       "mjd": 60325.5 + np.arange(7) / 100, "maglim": [20.2, 20.2, 21.1, 21.1, 19.6, np.nan, 21.6]})
    cands = Table({"object_id": ["kn", "slow", "asteroid", "bogus", "far", "variable"],
                   "ra": [*ranked["ra"][:4], 200.0, ranked["ra"][4]], "dec": [*ranked["dec"][:4], -80.0, ranked["dec"][4]],
                   "rb": [0.95, 0.9, 0.9, 0.2, 0.9, 0.9], "ssnamenr": ["", "", "1234", "", "", ""],
                   "var_name": ["", "", "", "", "", "GCVS 17"], "host_dist_mpc": [np.nan] * 6,
                   "rate_mag_per_day": [0.7, 0.02, 0.5, 0.5, 0.5, 0.5]})
    report = coverage_report(s240116o.skymap, exposures, W, H, GWConfig(), cands, event_id="S240116o")
    assert report["prob_covered"] == pytest.approx(ranked["cum_prob"][5], rel=1e-9)
    depth = {d["maglim"]: d["prob"] for d in report["by_depth"]}
    assert list(depth) == [19.5, 20.0, 20.5, 21.0, 21.5]
    assert depth[19.5] == pytest.approx(ranked["cum_prob"][4], rel=1e-9)  # all but field 6 (no depth measured)
    assert np.all(np.diff(list(depth.values())) <= 1e-12)                 # deeper: less covered
    assert depth[21.5] == pytest.approx(ranked["prob"][0], rel=1e-9)      # only the revisit of field 1 went that deep
    assert report["timeline"][-1]["cum_prob"] == report["prob_covered"] and report["n_fields"] == 6
    listed = {c["object_id"]: c for c in report["candidates"]}
    assert set(listed) == {"kn", "slow", "asteroid", "bogus", "variable"}    # "far" is outside the 90 % region
    assert listed["kn"]["kn_rank"] == 1 and "fading 0.70 mag/day (kilonova-like)" in listed["kn"]["kn_reasons"]
    assert listed["slow"]["kn_rank"] == 2 and 0 < listed["slow"]["kn_score"] < listed["kn"]["kn_score"]
    assert listed["asteroid"]["kn_score"] == 0 and "known asteroid 1234" in listed["asteroid"]["kn_reasons"]
    assert listed["bogus"]["kn_score"] == 0 and "real/bogus 0.2 below 0.5" in listed["bogus"]["kn_reasons"]
    assert listed["variable"]["kn_score"] == 0 and "known variable star GCVS 17" in listed["variable"]["kn_reasons"]
    assert "S240116o: 7 exposures of 6 fields" in summary(report)


def test_schedule_respects_moon_sun_altitude_and_horizon():
    """Full Moon night (2024-01-25) at Yaoan: a field on the Moon, one at the Sun, one that never
    rises 30 deg are never scheduled; a field well placed is visited twice; a high local horizon
    leaves nothing."""
    from astropy.coordinates import get_body, get_sun
    from astropy.time import Time

    from ast3stream.config import GWPlanConfig
    from ast3stream.gw.observe import SITES, night_window, schedule

    yaoan = SITES["yaoan"]
    start, end = night_window(yaoan, "2024-01-25")
    mid = start + (end - start) / 2
    moon = get_body("moon", mid, yaoan.location)
    sun = get_sun(mid)
    fields = Table({"field_id": ["moon", "sun", "south", "good"],
                    "ra": [moon.ra.deg, sun.ra.deg, 30.0, (moon.ra.deg + 90) % 360],
                    "dec": [moon.dec.deg, sun.dec.deg, -75.0, 30.0], "prob": [0.4, 0.3, 0.2, 0.1]})
    plan = GWPlanConfig()
    sched = schedule(fields, yaoan, start, end, plan)
    assert sched.meta["moon_illum"] > 0.95
    assert list(sched["field_id"]) == ["good", "good"]
    assert (Time(sched["start"][1]) - Time(sched["start"][0])).to_value("min") >= plan.revisit_gap_min - 1e-6
    assert all(m >= plan.moon_sep_full_deg for m in sched["moon_sep_deg"])
    seen = schedule(fields, yaoan, start, end, plan, done={"good": (1, Time(sched["start"][0]))})
    assert list(seen["field_id"]) == ["good"] and seen["visit"][0] == 2       # observed once already: one more
    walled = GWPlanConfig(horizon=((0.0, 80.0), (180.0, 80.0)))
    assert len(schedule(fields, yaoan, start, end, walled)) == 0
