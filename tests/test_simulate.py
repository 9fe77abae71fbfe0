"""The night simulator: its truth agrees with its pixels, its headers and its orbits."""
from __future__ import annotations

import argparse
import math

import ephem
import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from ast3stream.config import Settings
from ast3stream.reduction.sections import section_slices
from ast3stream.simulate import Night, simulate_night, write_exposure
from ast3stream.simulate.cli import add_cli

SEED = 5


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Night:
    return simulate_night(tmp_path_factory.mktemp("night"), n_exposures=6, scale=0.1, seed=SEED,
                          cloud_fraction=0.34, too_fields=[1002])


def _read(path):
    with fits.open(path) as hdul:
        return hdul[0].data.astype(np.float64), hdul[0].header


def _overscan_corrected(data, header):
    rows, cols = section_slices(header["BIASSEC"])
    out = data.copy()
    out[rows] -= np.median(data[rows, cols], axis=1)[:, None]
    return out


@pytest.fixture(scope="module")
def masters(night):
    """A simple master bias and normalised master flat, trimmed."""
    calib = night.out_dir / "calib"
    biases = [_overscan_corrected(*_read(p)) for p in sorted(calib.glob("bias_*.fits"))]
    bias = np.median(biases, axis=0)
    header = _read(next(calib.glob("flat_*.fits")))[1]
    trim = section_slices(header["TRIMSEC"])
    flats = [(_overscan_corrected(*_read(p)) - bias)[trim] for p in sorted(calib.glob("flat_*.fits"))]
    flat = np.median([f / np.median(f) for f in flats], axis=0)
    return bias, flat, trim


def _reduce(night, i, masters):
    bias, flat, trim = masters
    data, header = _read(night.exposures[i].path)
    return (_overscan_corrected(data, header) - bias)[trim] / flat * header["GAIN"], header


def _sky(night, i, shape):
    """The true sky + dark of a reduced frame (the simulator's sky model, from the truth table)."""
    row, (ny, nx) = night.table[i], shape
    gx = row["sky_gx"] * (np.arange(nx) / nx - 0.5)
    gy = row["sky_gy"] * (np.arange(ny) / ny - 0.5)
    return row["sky_e"] * (1 + gx[None, :] + gy[:, None]) + night.cfg.simulation.dark_e_s * row["exptime"]


def _isolated_stars(truth, shape, mag_range=(13.5, 18.0), fwhm=3.0, aperture=12.0, edge=25):
    """Stars whose aperture gets < 1% of their flux from the Moffat (beta = 3) wings of all other
    sources (galaxies counted as points), computed from the truth."""
    pts = truth[np.isin(truth["kind"], ["star", "galaxy", "transient", "asteroid"])]
    tree = cKDTree(np.c_[pts["x"], pts["y"]])
    stars = truth[(truth["kind"] == "star") & (truth["mag"] > mag_range[0]) & (truth["mag"] < mag_range[1])]
    ny, nx = shape
    ok = (stars["x"] > edge) & (stars["x"] < nx - edge) & (stars["y"] > edge) & (stars["y"] < ny - edge)
    stars = stars[ok]
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / 3) - 1))
    keep = []
    for s in stars:
        near = [j for j in tree.query_ball_point([s["x"], s["y"]], 150) if pts["id"][j] != s["id"]]
        d = np.maximum(np.hypot(pts["x"][near] - s["x"], pts["y"][near] - s["y"]) - aperture, 0)
        wings = pts["flux_e"][near] * np.minimum(2 * aperture**2 / alpha**2 * (1 + (d / alpha) ** 2) ** -3, 1)
        keep.append(np.sum(wings) < 0.01 * s["flux_e"])
    return stars[np.array(keep, bool)]


def _clear_science(night):
    t = night.table
    return [i for i in range(len(t)) if not t["template"][i] and t["cloud"][i] == 0]


def test_files_layout_and_headers(night):
    out = night.out_dir
    for name in ("refcat.fits", "galaxies.csv", "MPCORB.DAT", "fields.csv", "truth/exposures.ecsv"):
        assert (out / name).exists(), name
    assert len(list((out / "calib").glob("bias_*.fits"))) >= 5
    assert len(list((out / "calib").glob("flat_*.fits"))) >= 5
    det = night.cfg.detector
    assert [e.field_id for e in night.exposures] == [1001, 1002] * 3
    assert [e.too for e in night.exposures] == [False, True] * 3
    mjd = np.array([e.mjd for e in night.exposures])
    revisit_min = np.diff(mjd[::2]) * 1440
    assert np.all((revisit_min >= 10) & (revisit_min <= 20))
    with fits.open(night.exposures[0].path) as hdul:
        h, data = hdul[0].header, hdul[0].data
        assert data.dtype == np.uint16
        assert data.shape == (round(0.1 * det.ny_raw), round(0.1 * det.nx_raw))
        for key in ("DATE-OBS", "MJD-OBS", "EXPTIME", "FILTER", "FIELD", "OBJECT", "GAIN", "RDNOISE",
                    "SATURATE", "TRIMSEC", "BIASSEC", "TOO"):
            assert key in h, key
        assert h["IMAGETYP"] == "object" and h["EXPID"] == night.exposures[0].expid
        bias_cols = section_slices(h["BIASSEC"])[1]
        assert bias_cols.stop - bias_cols.start >= 16
        assert night.exposures[0].expid.startswith("ast3_20251121_1001_")
    assert fits.getheader(out / "calib" / "flat_01.fits")["IMAGETYP"] == "flat"
    assert fits.getheader(out / "calib" / "bias_01.fits")["IMAGETYP"] == "bias"
    gal = Table.read(out / "galaxies.csv")
    assert {"GLADE_no", "RA", "Dec", "d_L", "z_helio", "B", "K"} <= set(gal.colnames)
    assert len(gal) >= 2 * night.cfg.simulation.galaxy_min_per_field


def test_overscan_has_no_sky_and_reveals_row_bias(night, masters):
    data, h = _read(night.exposures[2].path)
    bias_raw, _ = _read(night.out_dir / "calib" / "bias_01.fits")
    rows, cols = section_slices(h["BIASSEC"])
    trim = section_slices(h["TRIMSEC"])
    sky_adu = night.table["sky_e"][2] / h["GAIN"]
    # the overscan holds bias only: the same level as in a bias frame, far below bias + sky
    assert abs(np.median(data[rows, cols]) - np.median(bias_raw[rows, cols])) < 10
    assert np.median(data[trim]) - np.median(data[rows, cols]) > 0.5 * sky_adu
    # the per-row overscan level follows the image's row structure
    img_rows = np.median(data[trim] - masters[0][trim], axis=1)
    os_rows = np.median(data[rows, cols], axis=1)
    assert np.corrcoef(np.diff(img_rows), np.diff(os_rows))[0, 1] > 0.5


def test_flats_and_calibrations(night, masters):
    bias, flat, trim = masters
    levels = [np.median((_overscan_corrected(*_read(p)) - bias)[trim])
              for p in sorted((night.out_dir / "calib").glob("flat_*.fits"))]
    assert all(15000 < v < 32000 for v in levels)
    # vignetting: corners darker than the centre by roughly the configured amount
    ny, nx = flat.shape
    centre = np.median(flat[ny // 2 - 20: ny // 2 + 20, nx // 2 - 20: nx // 2 + 20])
    corner = np.median(flat[:40, :40])
    assert 0.6 < corner / centre < 0.9
    # pixel-to-pixel variations of about prnu
    patch = flat[ny // 2 - 50: ny // 2 + 50, nx // 2 - 50: nx // 2 + 50]
    assert 0.5 * night.cfg.simulation.prnu < np.std(patch / np.median(patch)) < 2 * night.cfg.simulation.prnu


def test_star_flux_and_position_match_truth(night, masters):
    i = _clear_science(night)[0]
    img, _ = _reduce(night, i, masters)
    truth = night.truth(night.exposures[i].expid)
    row = night.table[i]
    stars = truth[truth["kind"] == "star"]
    # truth mags, zero point and electrons agree exactly on a clear frame
    np.testing.assert_allclose(stars["flux_e"], 10 ** (-0.4 * (stars["mag"] - row["zp_true"])), rtol=1e-5)
    sub = img - _sky(night, i, img.shape)
    iso = _isolated_stars(truth, img.shape, fwhm=row["fwhm_px"], aperture=4 * row["fwhm_px"])
    assert len(iso) >= 8
    # a 4 FWHM aperture holds 99.6% of a beta = 3 Moffat
    flux, err, _ = sep.sum_circle(sub, iso["x"], iso["y"], 4 * row["fwhm_px"],
                                  err=np.sqrt(row["sky_e"] + night.cfg.detector.read_noise**2), gain=1.0)
    pull = (flux - iso["flux_e"]) / err
    good = np.abs(pull) < 5            # an unlucky cosmic ray or faint neighbour aside
    assert good.mean() > 0.8
    assert np.sum(flux[good]) / np.sum(iso["flux_e"][good]) == pytest.approx(1, abs=0.01)
    assert abs(np.median(pull)) < 1
    sigma = row["fwhm_px"] / 2.355
    bright = iso[iso["mag"] < 16.5]
    xw, yw, _ = sep.winpos(sub, bright["x"] + 0.4, bright["y"] - 0.4, np.full(len(bright), sigma))
    d = np.hypot(xw - bright["x"], yw - bright["y"])
    assert np.median(d) < 0.05 and np.percentile(d, 90) < 0.1
    # the truth WCS maps catalogue positions onto the truth pixels
    x, y = night.true_wcs(night.exposures[i].expid).all_world2pix(stars["ra"], stars["dec"], 0)
    assert np.max(np.hypot(x - stars["x"], y - stars["y"])) < 1e-3


def test_header_wcs_is_approximate(night):
    sim = night.cfg.simulation
    for i, e in enumerate(night.exposures):
        true = night.true_wcs(e.expid)
        with fits.open(e.path) as hdul:
            hdr = WCS(hdul[0].header)
        nx, ny = true.pixel_shape
        c = [[(nx - 1) / 2, (ny - 1) / 2], [nx - 1, (ny - 1) / 2]]
        t = true.all_pix2world(c, 0)
        a = hdr.all_pix2world(c, 0)
        sep_arcmin = math.degrees(ephem.separation(*np.radians([t[0], a[0]]))) * 60
        assert 0.2 * sim.wcs_offset_arcmin < sep_arcmin <= 1.05 * sim.wcs_offset_arcmin + 0.1
        assert sep_arcmin == pytest.approx(night.table["hdr_offset_arcmin"][i], abs=0.1)
        pa_t = math.degrees(math.atan2(t[1, 1] - t[0, 1], (t[1, 0] - t[0, 0]) * math.cos(math.radians(t[0, 1]))))
        pa_a = math.degrees(math.atan2(a[1, 1] - a[0, 1], (a[1, 0] - a[0, 0]) * math.cos(math.radians(a[0, 1]))))
        assert abs((pa_t - pa_a + 180) % 360 - 180) <= sim.wcs_rotation_deg + 0.05
        scale_t = np.sqrt(abs(np.linalg.det(true.pixel_scale_matrix)))
        scale_a = np.sqrt(abs(np.linalg.det(hdr.pixel_scale_matrix)))
        assert abs(scale_a / scale_t - 1) <= sim.wcs_scale_error + 1e-6


def test_same_seed_same_files_and_lazy_frames(night, tmp_path):
    again = simulate_night(tmp_path / "again", n_exposures=6, scale=0.1, seed=SEED, cloud_fraction=0.34,
                           too_fields=[1002])
    for rel in ("refcat.fits", "MPCORB.DAT", "galaxies.csv", "calib/flat_02.fits",
                f"raw/{night.exposures[3].expid}.fits", f"truth/{night.exposures[3].expid}.fits"):
        assert (night.out_dir / rel).read_bytes() == (again.out_dir / rel).read_bytes(), rel
    lazy = write_exposure(Night.load(again.out_dir), night.exposures[4].expid, tmp_path / "lazy.fits")
    assert lazy.read_bytes() == night.exposures[4].path.read_bytes()
    other = simulate_night(tmp_path / "other", n_exposures=2, scale=0.1, seed=SEED + 1)
    assert other.exposures[0].path.read_bytes() != night.exposures[0].path.read_bytes()


def _zero_point(night, i, masters):
    """Median (refcat g + 2.5 log10 aperture flux) of isolated catalogue stars, and its median
    difference from the truth's local zero points (true g + 2.5 log10 injected e-)."""
    img, _ = _reduce(night, i, masters)
    truth = night.truth(night.exposures[i].expid)
    iso = _isolated_stars(truth, img.shape, (14, 18), night.table["fwhm_px"][i], 4 * night.table["fwhm_px"][i])
    iso = iso[iso["flux_e"] > 8000]   # S/N > 20
    assert len(iso) >= 3
    refcat = Table.read(night.out_dir / "refcat.fits")
    g = dict(zip(refcat["source_id"], refcat["g"]))
    flux, _, _ = sep.sum_circle(img - _sky(night, i, img.shape), iso["x"], iso["y"], 4 * night.table["fwhm_px"][i])
    ids = iso["id"].astype(int)
    ok = flux > 0
    zp = np.array([g[k] for k in ids[ok]]) + 2.5 * np.log10(flux[ok])
    return np.median(zp), np.median(zp - iso["mag"][ok] - 2.5 * np.log10(iso["flux_e"][ok]))


def test_clouds_lower_the_measured_transmission(night, masters):
    t = night.table
    cloudy = [i for i in range(len(t)) if t["cloud"][i] > 0]
    clear = _clear_science(night)
    assert cloudy and clear
    zp_clear = [_zero_point(night, i, masters)[0] for i in clear]
    for i, zp in zip(clear, zp_clear):
        assert zp == pytest.approx(t["zp_true"][i], abs=0.03)
    for i in cloudy:
        zp, vs_truth = _zero_point(night, i, masters)
        assert zp < min(zp_clear) - 0.1
        assert abs(vs_truth) < 0.05   # clouds are patchy: compare star by star with the local truth
        assert t["zp_true"][i] == pytest.approx(t["zp_clear"][i] - t["cloud"][i])


def _mpcorb_bodies(path):
    """Independent reading of the written MPCORB file (fixed columns) into ephem bodies."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUV"
    bodies = {}
    for line in open(path).read().splitlines()[1:]:
        b = ephem.EllipticalBody()
        ep = line[20:25]
        b._epoch_M = ephem.Date(f"{2000 + int(ep[1:3])}/{digits.index(ep[3])}/{digits.index(ep[4])}")
        b._epoch = ephem.J2000
        b._M, b._om, b._Om, b._inc = (float(line[a:a + 9]) for a in (26, 37, 48, 59))
        b._e, b._a = float(line[70:79]), float(line[92:103])
        b._H, b._G = float(line[8:13]), float(line[14:19])
        bodies[line[:7].strip()] = b
    return bodies


def test_asteroids_move_as_ephem_says(night):
    det = night.cfg.detector
    bodies = _mpcorb_bodies(night.out_dir / "MPCORB.DAT")
    obs = ephem.Observer()
    obs.lon, obs.lat, obs.elevation, obs.pressure = str(det.site_lon), str(det.site_lat), det.site_height, 0
    seen: dict[str, list] = {}
    parallax_rate = {}   # max change of the diurnal parallax [deg/day]
    for i, e in enumerate(night.exposures):
        truth = night.truth(e.expid)
        for r in truth[truth["kind"] == "asteroid"]:
            obs.date = ephem.Date(night.table["mjd_mid"][i] - 15019.5)
            b = bodies[r["id"]]
            b.compute(obs)
            ra, dec = math.degrees(b.a_ra), math.degrees(b.a_dec)
            # geocentric astrometric vs the truth's topocentric: differ by the parallax only
            off = math.hypot((r["ra"] - ra) * math.cos(math.radians(dec)), r["dec"] - dec) * 3600
            assert off < 8.8 / b.earth_distance + 0.5
            assert r["mag"] == pytest.approx(b.mag + night.cfg.simulation.asteroid_g_minus_v, abs=0.02)
            seen.setdefault(r["id"], []).append((night.table["mjd_mid"][i], r["ra"], r["dec"], ra, dec))
            parallax_rate[r["id"]] = 8.8 / b.earth_distance / 3600 * 2 * math.pi
    # every field has its asteroids, most seen in all visits; motion between visits matches ephem
    assert len(seen) >= 2 * night.cfg.simulation.asteroids_per_field
    for key, track in seen.items():
        t = np.array(track)
        if len(t) < 2:
            continue
        d_truth, d_ephem = np.diff(t[:, 1:3], axis=0), np.diff(t[:, 3:], axis=0)
        tol = 0.2 / 3600 + parallax_rate[key] * np.diff(t[:, 0])[:, None]
        assert np.all(np.abs(d_truth - d_ephem) < tol)
        assert np.all(np.hypot(*d_truth.T) > 1 / 3600)   # they move


def test_transients_absent_in_template_then_present(night, masters):
    tr = Table.read(night.out_dir / "truth" / "transients.ecsv")
    assert len(tr) == 2 * night.cfg.simulation.transients_per_field
    gal = Table.read(night.out_dir / "galaxies.csv")
    for e, row in zip(night.exposures, night.table):
        truth = night.truth(e.expid)
        t = truth[truth["kind"] == "transient"]
        ids = set(tr["id"][tr["field_id"] == e.field_id])
        if row["template"]:
            later = night.truth(night.exposures[night.exposures.index(e) + 2].expid)
            later_mag = dict(zip(later["id"], later["mag"]))
            assert all(m > later_mag[k] + 2.4 for k, m in zip(t["id"], t["mag"]))
        else:
            assert set(t["id"]) == ids
            assert np.all((t["mag"] >= 16.5) & (t["mag"] <= 20.5))
    # in or near (within 2 r_e) their host galaxies, off the nucleus
    host = {int(g["GLADE_no"]): g for g in gal}
    for t in tr:
        g = host[int(t["host"])]
        sep_px = math.hypot((t["ra"] - g["RA"]) * math.cos(math.radians(g["Dec"])), t["dec"] - g["Dec"]) * 3600 / 0.41
        assert 0.3 < sep_px < 100
    # visible in the pixels: science minus template at the truth position
    i = _clear_science(night)[0]
    e = night.exposures[i]
    sci, _ = _reduce(night, i, masters)
    truth = night.truth(e.expid)
    t = truth[(truth["kind"] == "transient") & (truth["mag"] < 19)]
    assert len(t)
    flux, _, _ = sep.sum_circle(sci - _sky(night, i, sci.shape), t["x"], t["y"], 8.0)
    assert np.all(flux > 0.9 * t["flux_e"])   # the host adds light: at least the transient is there


def test_cosmics_and_trails_in_pixels(night, masters):
    trails = 0
    for i, e in enumerate(night.exposures):
        truth = night.truth(e.expid)
        img, _ = _reduce(night, i, masters)
        cr = truth[truth["kind"] == "cosmic"]
        sky = night.table["sky_e"][i]
        peak = [img[int(round(r["y"])), int(round(r["x"]))] for r in cr
                if 0 <= round(r["y"]) < img.shape[0] and 0 <= round(r["x"]) < img.shape[1]]
        assert all(p > sky + 100 for p in peak)
        trails += int(np.sum(truth["kind"] == "trail"))
    assert trails >= 1


def test_catalogue_statistics(night):
    stars = Table.read(night.out_dir / "truth" / "stars.fits")
    refcat = Table.read(night.out_dir / "refcat.fits")
    ra, dec = stars["ra"], stars["dec"]
    area = (np.radians(np.ptp(np.unwrap(np.radians(ra)) * 180 / np.pi))
            * (np.sin(np.radians(dec.max())) - np.sin(np.radians(dec.min())))) * (180 / np.pi) ** 2
    n21 = np.sum(stars["g"] < 21) / area
    assert n21 == pytest.approx(night.cfg.simulation.star_density_g21, rel=0.1)
    slope = np.log10(np.sum(stars["g"] < 20) / np.sum(stars["g"] < 18)) / 2
    assert slope == pytest.approx(0.3, abs=0.03)
    assert refcat["g"].max() < 21.2 and np.all((refcat["g_err"] >= 0.01) & (refcat["g_err"] <= 0.05))
    truth_g = dict(zip(stars["id"], stars["g"]))
    resid = (refcat["g"] - np.array([truth_g[k] for k in refcat["source_id"]])) / refcat["g_err"]
    assert np.std(resid) == pytest.approx(1, abs=0.1)
    assert {"ra", "dec", "g", "g_err", "pmra", "pmdec"} <= set(refcat.colnames)


def test_cli_registers_simulate(tmp_path):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "--out", str(tmp_path), "--exposures", "2", "--scale", "0.05",
                              "--seed", "3", "--fields", "1", "--cloud-fraction", "0.5", "--too", "1001"])
    assert args.exposures == 2 and args.too == [1001] and args.cloud_fraction == 0.5
    assert args.func(args, Settings()) == 0
    assert len(list((tmp_path / "raw").glob("*.fits"))) == 2


def test_maglim_matches_measured_noise(night, masters):
    """The 5-sigma limit in the truth agrees with the noise of PSF-weighted fluxes at empty places."""
    from ast3stream.simulate.psf import PSFModel
    from ast3stream.simulate.render import psf_stamp

    i = _clear_science(night)[0]
    img, _ = _reduce(night, i, masters)
    row, sim = night.table[i], night.cfg.simulation
    ny, nx = img.shape
    psf = PSFModel(row["psf_fwhm0"], sim.psf_beta, sim.psf_curvature, row["psf_tilt"], sim.psf_elongation,
                   row["psf_e1"], row["psf_e2"], nx, ny)
    h = 12
    p = psf_stamp(psf, (nx - 1) / 2, (ny - 1) / 2, h)
    sub = img - _sky(night, i, img.shape)
    # empty places near the centre: nothing within 8 px, nothing brighter than 18 within 40 px
    truth = night.truth(night.exposures[i].expid)
    src = truth[truth["kind"] != "trail"]
    near, bright = cKDTree(np.c_[src["x"], src["y"]]), cKDTree(np.c_[src["x"], src["y"]][src["mag"] < 18])
    rng = np.random.default_rng(0)
    pts = np.c_[rng.integers(nx // 2 - 300, nx // 2 + 300, 4000), rng.integers(ny // 2 - 300, ny // 2 + 300, 4000)]
    empty = (near.query(pts)[0] > 8) & (bright.query(pts)[0] > 40)
    assert empty.sum() > 300
    flux = np.array([np.sum(sub[y - h: y + h + 1, x - h: x + h + 1] * p) for x, y in pts[empty]]) / np.sum(p**2)
    sigma = 1.4826 * np.median(np.abs(flux - np.median(flux)))
    f5 = (25 + np.sqrt(625 + 100 * sigma**2)) / 2                  # F = 5 sqrt(F + sigma^2)
    assert row["zp_true"] - 2.5 * np.log10(f5) == pytest.approx(row["maglim_true"], abs=0.1)


def test_fewer_exposures_than_fields(tmp_path):
    """Regression: one exposure with the default two fields visits one field (was an IndexError)."""
    night = simulate_night(tmp_path, n_exposures=1, scale=0.05, seed=SEED)
    fields = Table.read(tmp_path / "fields.csv")
    assert len(night.exposures) == 1 and list(fields["field_id"]) == [night.table["field_id"][0]]
    transients = Table.read(tmp_path / "truth" / "transients.ecsv")
    assert np.all(transients["field_id"] == fields["field_id"][0])
    assert night.exposures[0].path.exists()


def test_threads_do_not_change_frames_and_a_complete_night_is_reused(tmp_path):
    """One thread and many write the same bytes; ``reuse`` opens a complete night with the same
    parameters without rewriting it, and re-simulates when a parameter differs."""
    night = simulate_night(tmp_path / "a", n_exposures=1, scale=0.05, seed=SEED, threads=4, reuse=True)
    path = night.exposures[0].path
    one = write_exposure(night, 0, tmp_path / "one.fits", threads=1)
    assert one.read_bytes() == path.read_bytes()
    stamp = path.stat().st_mtime_ns
    again = simulate_night(tmp_path / "a", n_exposures=1, scale=0.05, seed=SEED, reuse=True)
    assert again.exposures[0].path.stat().st_mtime_ns == stamp
    other = simulate_night(tmp_path / "a", n_exposures=1, scale=0.05, seed=SEED + 1, reuse=True)
    assert other.seed == SEED + 1 and other.exposures[0].path.stat().st_mtime_ns != stamp
