"""A simulated AST3-3 night: plan it (catalogues, orbits, calibrations, truth), then write the raw
science frames, all at once or one at a time.

Layout of ``out_dir``::

    refcat.fits  galaxies.csv  MPCORB.DAT  fields.csv
    calib/bias_NN.fits  calib/flat_NN.fits
    raw/<expid>.fits
    truth/night.json  truth/exposures.ecsv  truth/<expid>.fits  truth/<expid>.wcs.fits
    truth/stars.fits  truth/galaxies.ecsv  truth/transients.ecsv  truth/defects.fits

Every random draw comes from ``numpy.random.default_rng([seed, stream, index])``, so a frame
written lazily is identical to one written in a batch.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from ..catalogs.mpcorb import Orbit, read_mpcorb
from ..config import DetectorConfig, Settings, SimulationConfig
from . import atmosphere, catalogs, orbits, pointing, render
from .detector import Camera, camera, layout, read_out
from .psf import PSFModel

STARS, GALAXIES, TRANSIENTS, ASTEROIDS, PLAN, CLOUD, FRAME, CALIB, REFCAT = range(1, 10)


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


@dataclass
class Exposure:
    """One science exposure, in observing order."""

    expid: str
    path: Path
    field_id: int
    mjd: float          #: start (MJD-OBS)
    mjd_mid: float
    too: bool
    template: bool      #: first visit of its field (no transients yet)

    @property
    def field(self) -> int:
        return self.field_id


@dataclass
class Night:
    """A planned night; ``exposures`` in observing order. ``Night.load(out_dir)`` re-opens one."""

    out_dir: Path
    cfg: Settings
    scale: float
    seed: int
    exposures: list[Exposure] = field(default_factory=list)

    @classmethod
    def load(cls, out_dir: str | Path) -> "Night":
        out_dir = Path(out_dir)
        meta = json.loads((out_dir / "truth" / "night.json").read_text())
        cfg = Settings(detector=meta["detector"], simulation=meta["simulation"])
        night = cls(out_dir, cfg, meta["scale"], meta["seed"])
        night.exposures = [
            Exposure(str(r["expid"]), out_dir / r["path"], int(r["field_id"]), float(r["mjd_obs"]),
                     float(r["mjd_mid"]), bool(r["too"]), bool(r["template"]))
            for r in night.table
        ]
        return night

    @cached_property
    def table(self) -> Table:
        """``truth/exposures.ecsv``."""
        return Table.read(self.out_dir / "truth" / "exposures.ecsv")

    @cached_property
    def stars(self) -> Table:
        return Table.read(self.out_dir / "truth" / "stars.fits")

    @cached_property
    def galaxies(self) -> Table:
        return Table.read(self.out_dir / "truth" / "galaxies.ecsv")

    @cached_property
    def transients(self) -> Table:
        return Table.read(self.out_dir / "truth" / "transients.ecsv")

    @cached_property
    def orbits(self) -> list[Orbit]:
        return read_mpcorb(self.out_dir / "MPCORB.DAT")

    @cached_property
    def camera(self) -> Camera:
        return camera(self.cfg.detector, self.cfg.simulation, self.scale)

    def truth(self, expid: str) -> Table:
        return Table.read(self.out_dir / "truth" / f"{expid}.fits")

    def true_wcs(self, expid: str) -> WCS:
        """The exact TAN-SIP WCS of the trimmed image."""
        w = _wcs(self.out_dir / "truth" / f"{expid}.wcs.fits", 0)
        w.pixel_shape = (self.camera.lay.nx, self.camera.lay.ny)
        return w

    def index(self, which: int | str) -> int:
        if isinstance(which, str):
            return [e.expid for e in self.exposures].index(which)
        return int(which)


def _settings(cfg: Settings | None, detector: DetectorConfig | None, sim: SimulationConfig | None) -> Settings:
    """The sections to simulate with: ``detector``/``sim`` when given, else ``cfg``'s, else defaults."""
    cfg = cfg or Settings()
    return Settings(detector=detector or cfg.detector, simulation=sim or cfg.simulation)


def _meta(n_exposures, scale, seed, n_fields, cloud_fraction, too_fields, cfg: Settings) -> dict:
    return {"seed": seed, "scale": scale, "n_exposures": n_exposures, "n_fields": n_fields,
            "cloud_fraction": cloud_fraction, "too_fields": [int(t) for t in too_fields],
            "detector": cfg.detector.model_dump(mode="json"), "simulation": cfg.simulation.model_dump(mode="json")}


def simulate_night(out_dir: str | Path, n_exposures: int = 6, scale: float = 0.1, seed: int = 1,
                   cfg: Settings | None = None, n_fields: int = 2, cloud_fraction: float = 0.0,
                   too_fields=(), *, frames: bool = True, detector: DetectorConfig | None = None,
                   sim: SimulationConfig | None = None, threads: int | None = None, reuse: bool = False) -> Night:
    """Plan a night into ``out_dir`` and (unless ``frames=False``) write all its raw frames, in
    ``threads`` threads (default: all cores). With ``reuse``, a night already complete in
    ``out_dir`` with the same parameters is opened instead (a cache for benchmarks)."""
    cfg = _settings(cfg, detector, sim)
    n_fields = min(n_fields, n_exposures)
    if reuse and (night := _complete(Path(out_dir), _meta(n_exposures, scale, seed, n_fields, cloud_fraction,
                                                           too_fields, cfg), frames)) is not None:
        return night
    night = plan_night(out_dir, n_exposures, scale, seed, cfg, n_fields, cloud_fraction, too_fields, threads=threads)
    if frames:
        for i in range(len(night.exposures)):
            write_exposure(night, i, threads=threads)
    return night


def _complete(out_dir: Path, meta: dict, frames: bool) -> Night | None:
    """The night in ``out_dir`` if it was simulated with ``meta`` and has all its files."""
    path = out_dir / "truth" / "night.json"
    if not path.exists():
        return None
    have = json.loads(path.read_text())
    if {k: have.get(k) for k in meta} != json.loads(json.dumps(meta)):
        return None
    night = Night.load(out_dir)
    if frames and not all(e.path.exists() and (out_dir / "truth" / f"{e.expid}.fits").exists() for e in night.exposures):
        return None
    return night


def plan_night(out_dir: str | Path, n_exposures: int = 6, scale: float = 0.1, seed: int = 1,
               cfg: Settings | None = None, n_fields: int = 2, cloud_fraction: float = 0.0,
               too_fields=(), *, detector: DetectorConfig | None = None, sim: SimulationConfig | None = None,
               threads: int | None = None) -> Night:
    """Write everything but the raw science frames (catalogues, orbits, calibrations, truth)."""
    cfg = _settings(cfg, detector, sim)
    det, sim = cfg.detector, cfg.simulation
    out_dir = Path(out_dir)
    for sub in ("calib", "raw", "truth"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    lay = layout(det, scale)
    mid = pointing.midnight_mjd(det, sim.night)
    n_fields = min(n_fields, n_exposures)      # fewer exposures than fields: visit fewer fields
    fields = pointing.plan_fields(n_fields, lay, det, sim, mid)
    nominal = [pointing.make_wcs(f["ra"], f["dec"], lay, det.pixel_scale) for f in fields]

    # schedule: fields interleaved, centred on midnight
    step = max(sim.revisit_min * 60 / n_fields, det.exptime + sim.overhead_s) / 86400
    start = mid - (n_exposures - 1) / 2 * step + np.arange(n_exposures) * step
    which = np.arange(n_exposures) % n_fields
    visit = np.arange(n_exposures) // n_fields
    plan = _rng(seed, PLAN)
    n_cloud = round(cloud_fraction * n_exposures)
    order = np.concatenate([plan.permutation(np.flatnonzero(visit > 0)), plan.permutation(np.flatnonzero(visit == 0))])
    cloudy = np.isin(np.arange(n_exposures), order[:n_cloud])
    trailed = np.isin(np.arange(n_exposures),
                      plan.choice(n_exposures, max(1, round(sim.trail_fraction * n_exposures)), replace=False))
    date = sim.night.replace("-", "")
    seeing = _seeing(n_exposures, sim.seeing_min_px, sim.seeing_max_px, step * 1440, plan)
    rows, jitter_px = [], sim.pointing_jitter_arcmin * 60 / det.pixel_scale
    for k in range(n_exposures):
        rng = _rng(seed, PLAN, k + 1)
        f = fields[which[k]]
        fid = int(f["field_id"])
        expid = f"ast3_{date}_{fid}_{k + 1:04d}"
        mjd_mid = start[k] + det.exptime / 2 / 86400
        jit = rng.normal(0, sim.pointing_jitter_arcmin / 60, 2)
        ra = (f["ra"] + jit[0] / math.cos(math.radians(f["dec"]))) % 360
        dec = f["dec"] + jit[1]
        rot = rng.normal(0, 0.05)
        true = pointing.make_wcs(ra, dec, lay, det.pixel_scale, rot, sim.distortion_px)
        approx, err = pointing.header_wcs(ra, dec, rot, lay, det, sim, rng)
        x_air = pointing.airmass(det, ra, dec, mjd_mid)
        psf = PSFModel(seeing[k] * x_air**0.6, sim.psf_beta, sim.psf_curvature,
                       rng.uniform(-0.05, 0.05), sim.psf_elongation, *rng.normal(0, 0.02, 2), lay.nx, lay.ny)
        zp_clear = atmosphere.zp_clear(det, sim, x_air) + rng.normal(0, 0.02)
        cloud_mean = rng.uniform(0.5, 1.5) if cloudy[k] else 0.0
        cloud = atmosphere.mean_extinction(lay.nx, lay.ny, cloud_mean, [seed, CLOUD, k], sim.cloud_max_mag)
        sky_e = atmosphere.sky_electrons(sim.sky_mag + rng.normal(0, 0.15) - 0.2 * (x_air - 1),
                                         det.zeropoint, det.pixel_scale)
        zp_true = zp_clear - cloud
        header = out_dir / "truth" / f"{expid}.wcs.fits"
        fits.HDUList([fits.PrimaryHDU(header=true.to_header(relax=True)),
                      fits.ImageHDU(header=approx.to_header(), name="APPROX")]).writeto(header, overwrite=True)
        rows.append({
            "expid": expid, "path": f"raw/{expid}.fits", "field_id": fid, "visit": int(visit[k]),
            "template": bool(visit[k] == 0), "too": fid in set(int(t) for t in too_fields),
            "mjd_obs": start[k], "mjd_mid": mjd_mid, "exptime": det.exptime, "airmass": x_air,
            "zp_clear": zp_clear, "zp_true": zp_true, "cloud": cloud, "cloud_mean_param": cloud_mean,
            "fwhm_px": psf.median_fwhm(), "psf_fwhm0": psf.fwhm, "psf_tilt": psf.tilt_x,
            "psf_e1": psf.e1, "psf_e2": psf.e2, "sky_e": sky_e,
            "sky_gx": rng.uniform(-0.03, 0.03), "sky_gy": rng.uniform(-0.03, 0.03), "trail": bool(trailed[k]),
            "maglim_true": _maglim(psf, sky_e, zp_true, det.read_noise, sim.dark_e_s * det.exptime),
            "crval1": true.wcs.crval[0], "crval2": true.wcs.crval[1], "cd1_1": true.wcs.cd[0, 0],
            "cd1_2": true.wcs.cd[0, 1], "cd2_1": true.wcs.cd[1, 0], "cd2_2": true.wcs.cd[1, 1],
            "wcs_path": f"truth/{expid}.wcs.fits", "hdr_offset_arcmin": err["offset_arcmin"],
            "hdr_rotation_deg": err["rotation_deg"], "hdr_scale_error": err["scale_error"],
        })
    exposures = Table(rows=rows)
    exposures.meta["comment"] = ("zp_true: mag giving 1 e- in the exposure incl. mean cloud; "
                                 "true WCS (TAN-SIP) in wcs_path; x, y 0-based in the trimmed image")

    # the sky
    w, h = pointing.field_size_deg(lay, det)
    box = catalogs.sky_box(fields, w / 2, h / 2, sim.refcat_margin_deg)
    stars = catalogs.draw_stars(box, sim.star_density_g21, sim.star_mag_bright, sim.star_mag_faint,
                                _rng(seed, STARS))
    refcat = catalogs.reference_catalogue(stars, sim.refcat_mag_limit, _rng(seed, REFCAT))
    inset = 2 * jitter_px + 20   # in all visits despite the pointing jitter
    gal = catalogs.draw_galaxies(box, nominal, sim.galaxy_density, sim.galaxy_min_per_field,
                                 det.pixel_scale, _rng(seed, GALAXIES), inset, sim.transients_per_field,
                                 sim.background_galaxy_density)
    visits = {int(fid): list(exposures["mjd_mid"][exposures["field_id"] == fid]) for fid in fields["field_id"]}
    transients = catalogs.draw_transients(gal, fields, nominal, visits, sim.transients_per_field, mid,
                                          inset, det.pixel_scale, _rng(seed, TRANSIENTS))
    orbs = _asteroids(fields, nominal, visits, inset, cfg, _rng(seed, ASTEROIDS))

    refcat.write(out_dir / "refcat.fits", overwrite=True)
    catalogs.glade_table(gal).write(out_dir / "galaxies.csv", overwrite=True)
    fields.write(out_dir / "fields.csv", overwrite=True)
    (out_dir / "MPCORB.DAT").write_text("\n".join([orbits.MPCORB_HEADER] + [o.line() for o in orbs]) + "\n")
    stars.write(out_dir / "truth" / "stars.fits", overwrite=True)
    gal.write(out_dir / "truth" / "galaxies.ecsv", overwrite=True)
    transients.write(out_dir / "truth" / "transients.ecsv", overwrite=True)
    exposures.write(out_dir / "truth" / "exposures.ecsv", overwrite=True)
    meta = _meta(n_exposures, scale, seed, n_fields, cloud_fraction, too_fields, cfg)
    meta["midnight_mjd"] = mid
    (out_dir / "truth" / "night.json").write_text(json.dumps(meta, indent=1))
    night = Night.load(out_dir)
    fits.writeto(out_dir / "truth" / "defects.fits", night.camera.defects, overwrite=True)
    write_calibrations(night, mid, threads=threads)
    return night


def _seeing(n: int, lo: float, hi: float, step_min: float, rng: np.random.Generator) -> np.ndarray:
    """Zenith seeing FWHM [px] wandering within [lo, hi]: a random walk of rms
    0.05 (hi - lo) per sqrt(minute), clipped to the range."""
    s = np.empty(n)
    s[0] = rng.uniform(lo, hi)
    for k in range(1, n):
        s[k] = np.clip(s[k - 1] + rng.normal(0, 0.05 * (hi - lo) * math.sqrt(step_min)), lo, hi)
    return s


def _maglim(psf: PSFModel, sky_e: float, zp: float, read_noise: float, dark_e: float, snr: float = 5.0) -> float:
    """5-sigma point-source limit of PSF-fitting photometry: F = snr sqrt(F + n_eff V) with
    n_eff = 1 / sum(P^2) and V = sky + dark + RN^2 per pixel."""
    p = render.psf_stamp(psf, (psf.nx - 1) / 2, (psf.ny - 1) / 2, 20)
    n_eff = 1 / np.sum(p**2)
    var = sky_e + dark_e + read_noise**2
    flux = (snr**2 + math.sqrt(snr**4 + 4 * snr**2 * n_eff * var)) / 2
    return zp - 2.5 * math.log10(flux)


def _asteroids(fields: Table, nominal: list[WCS], visits: dict, inset: float, cfg: Settings,
               rng: np.random.Generator) -> list[orbits.Orbit]:
    """Main-belt asteroids in every field and ``fast_movers`` near-Earth ones, on the fields at the
    mean time of each field's visits."""
    det, sim = cfg.detector, cfg.simulation
    y, m, d = (int(v) for v in sim.night.split("-"))
    epoch = orbits.pack_epoch(y, m, d)
    out, k = [], 0
    n_fields = len(fields)
    for j, (f, w) in enumerate(zip(fields, nominal)):
        n_fast = sum(1 for i in range(sim.fast_movers) if i % n_fields == j)
        nx, ny = w.pixel_shape
        for i in range(sim.asteroids_per_field + n_fast):
            neo = i >= sim.asteroids_per_field
            ra, dec = w.all_pix2world(rng.uniform(inset, nx - inset), rng.uniform(inset, ny - inset), 0)
            v_mag = rng.uniform(16.5, 18.0) if neo else rng.uniform(17.0, 20.2)
            desig, name = orbits.provisional(y, m, d, 50 + k)
            t = float(np.mean(visits[int(f["field_id"])]))
            out.append(orbits.orbit_through(float(ra), float(dec), t, v_mag, desig, name, epoch, det, rng, neo))
            k += 1
    return out


def _raw_header(det, lay, imagetyp: str, mjd: float, exptime: float) -> fits.Header:
    h = fits.Header()
    h["TELESCOP"] = (det.name, "simulated by ast3stream.simulate")
    h["IMAGETYP"] = imagetyp
    h["DATE-OBS"] = (Time(mjd, format="mjd", scale="utc").isot, "exposure start (UTC)")
    h["MJD-OBS"] = (mjd, "exposure start")
    h["EXPTIME"] = (exptime, "s")
    h["FILTER"] = det.filter
    h["GAIN"] = (det.gain, "e-/ADU")
    h["RDNOISE"] = (det.read_noise, "e-")
    h["SATURATE"] = (det.saturation, "ADU")
    h["TRIMSEC"] = lay.trimsec
    h["BIASSEC"] = lay.biassec
    h["SITELONG"], h["SITELAT"], h["SITEELEV"] = det.site_lon, det.site_lat, det.site_height
    return h


def _write_raw(path: Path, data: np.ndarray, header: fits.Header) -> Path:
    """Write atomically (``.part``, then rename) so a watcher never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    fits.PrimaryHDU(data, header).writeto(tmp, overwrite=True)
    tmp.replace(path)
    return path


def write_calibrations(night: Night, mid: float, threads: int | None = None) -> list[Path]:
    """``n_bias`` biases and ``n_flat`` evening twilight flats (level falling from ``flat_adu[0]``
    to ``flat_adu[1]``)."""
    det, sim = night.cfg.detector, night.cfg.simulation
    cam, lay = night.camera, night.camera.lay
    paths = []
    for i in range(sim.n_bias):
        raw = read_out(cam, None, _rng(night.seed, CALIB, i), 0.0, threads=threads)
        hdr = _raw_header(det, lay, "bias", mid - 0.35 + i / 1440, 0.0)
        paths.append(_write_raw(night.out_dir / "calib" / f"bias_{i + 1:02d}.fits", raw, hdr))
    levels = np.linspace(*sim.flat_adu, sim.n_flat)
    for i, level in enumerate(levels):
        e = cam.response * np.float32(level * det.gain)
        raw = read_out(cam, e, _rng(night.seed, CALIB, 100 + i), 3.0, threads=threads)
        hdr = _raw_header(det, lay, "flat", mid - 0.3 + 2 * i / 1440, 3.0)
        hdr["OBJECT"] = "twilight flat"
        paths.append(_write_raw(night.out_dir / "calib" / f"flat_{i + 1:02d}.fits", raw, hdr))
    return paths


def write_exposure(night: Night | str | Path, which: int | str, dest: str | Path | None = None,
                   threads: int | None = None) -> Path:
    """Render one science frame (index or expid) to ``dest`` (default ``raw/<expid>.fits``) and
    its truth table to ``truth/<expid>.fits``, in ``threads`` threads (default: all cores; the
    frame does not depend on the number)."""
    night = night if isinstance(night, Night) else Night.load(night)
    i = night.index(which)
    row = night.table[i]
    det, sim = night.cfg.detector, night.cfg.simulation
    cam = night.camera
    lay = cam.lay
    expid, mjd0, mjd_mid, exptime = str(row["expid"]), float(row["mjd_obs"]), float(row["mjd_mid"]), float(row["exptime"])
    rng = _rng(night.seed, FRAME, i)
    wcs = night.true_wcs(expid)
    psf = PSFModel(float(row["psf_fwhm0"]), sim.psf_beta, sim.psf_curvature, float(row["psf_tilt"]),
                   sim.psf_elongation, float(row["psf_e1"]), float(row["psf_e2"]), lay.nx, lay.ny)
    cloud_key = [night.seed, CLOUD, i]

    def zp_at(x, y):
        return float(row["zp_clear"]) - atmosphere.cloud_extinction(
            x, y, lay.nx, lay.ny, float(row["cloud_mean_param"]), cloud_key, sim.cloud_max_mag)

    img = np.zeros((lay.ny, lay.nx), np.float32)
    truth: list[dict] = []

    def record(kind, ids, ra, dec, x, y, mag, flux, length=0.0, pa=np.nan):
        inside = (x >= -0.5) & (x < lay.nx - 0.5) & (y >= -0.5) & (y < lay.ny - 0.5)
        n = int(np.sum(inside))
        if n:
            truth.append({"kind": np.full(n, kind), "id": np.asarray(ids).astype(str)[inside],
                          "ra": np.asarray(ra, float)[inside], "dec": np.asarray(dec, float)[inside],
                          "x": x[inside], "y": y[inside], "mag": np.broadcast_to(mag, x.shape)[inside],
                          "flux_e": np.broadcast_to(flux, x.shape)[inside],
                          "trail_len": np.broadcast_to(length, x.shape)[inside],
                          "trail_pa": np.broadcast_to(pa, x.shape)[inside]})

    # stars and transients: PSF point sources
    for kind, cat in (("star", night.stars), ("transient", night.transients)):
        ra, dec = np.asarray(cat["ra"], float), np.asarray(cat["dec"], float)
        near = _near(wcs, ra, dec)
        cat, ra, dec = cat[near], ra[near], dec[near]
        mag = np.asarray(cat["g"], float) if kind == "star" else catalogs.transient_mag(cat, mjd_mid)
        x, y = wcs.all_world2pix(ra, dec, 0, quiet=True)
        on = np.isfinite(mag) & (x > -40) & (x < lay.nx + 40) & (y > -40) & (y < lay.ny + 40)
        x, y, mag, ids, ra, dec = x[on], y[on], mag[on], np.asarray(cat["id"])[on], ra[on], dec[on]
        flux = 10 ** (-0.4 * (mag - zp_at(x, y)))
        render.add_points(img, x, y, flux, psf)
        record(kind, ids, ra, dec, x, y, mag, flux)

    # galaxies: PSF-convolved Sersic profiles
    gal = night.galaxies
    near = _near(wcs, np.asarray(gal["ra"]), np.asarray(gal["dec"]))
    gal = gal[near]
    x, y = wcs.all_world2pix(np.asarray(gal["ra"]), np.asarray(gal["dec"]), 0, quiet=True)
    flux = 10 ** (-0.4 * (np.asarray(gal["g"]) - zp_at(x, y)))
    near_k = np.flatnonzero((x > -200) & (x < lay.nx + 200) & (y > -200) & (y < lay.ny + 200))
    with ThreadPoolExecutor(threads or os.cpu_count()) as pool:
        stamps = pool.map(lambda k: render.sersic_stamp(x[k], y[k], flux[k], gal["r_e_px"][k], gal["sersic_n"][k],
                                                        gal["q"][k], gal["pa"][k], psf), near_k)
        for stamp in stamps:   # added in catalogue order: the frame does not depend on the threads
            render.add_stamp(img, *stamp)
    record("galaxy", gal["GLADE_no"], gal["ra"], gal["dec"], x, y, np.asarray(gal["g"]), flux)

    # asteroids: trailed from the start to the end of the exposure
    for orb in night.orbits:
        body = orb.body()
        pos = [orbits.radec(body, det, t) for t in (mjd0, mjd_mid, mjd0 + exptime / 86400)]
        ra, dec, v = (np.array(c) for c in zip(*pos))
        x, y = wcs.all_world2pix(ra, dec, 0, quiet=True)
        if not np.any((x > -50) & (x < lay.nx + 50) & (y > -50) & (y < lay.ny + 50)):
            continue
        mag = v[1] + sim.asteroid_g_minus_v
        f = float(10 ** (-0.4 * (mag - zp_at(x[1:2], y[1:2])[0])))
        render.add_trailed(img, x[0], y[0], x[2], y[2], f, psf)
        record("asteroid", [orb.designation], ra[1:2], dec[1:2], x[1:2], y[1:2], mag, f,
               math.hypot(x[2] - x[0], y[2] - y[0]), math.degrees(math.atan2(y[2] - y[0], x[2] - x[0])))

    # satellite trail (above the clouds)
    if row["trail"]:
        x0, y0 = rng.uniform(0, lay.nx), rng.uniform(0, lay.ny)
        pa = rng.uniform(0, math.pi)
        f = render.add_line(img, x0, y0, pa, rng.uniform(30, 400), rng.uniform(0.8, 1.6))
        # the point of the trail closest to the image centre
        cx, cy = (lay.nx - 1) / 2, (lay.ny - 1) / 2
        t = (cx - x0) * math.cos(pa) + (cy - y0) * math.sin(pa)
        xt, yt = np.array([x0 + t * math.cos(pa)]), np.array([y0 + t * math.sin(pa)])
        rt, dt = wcs.all_pix2world(xt, yt, 0)
        record("trail", [f"SAT{i + 1}"], rt, dt, xt, yt, np.nan, f, np.hypot(lay.nx, lay.ny), math.degrees(pa))

    # sky (with a gentle gradient), then the light meets the detector's response
    gx, gy, sky = float(row["sky_gx"]), float(row["sky_gy"]), float(row["sky_e"])
    sky_x = (sky * gx * (np.arange(lay.nx) / lay.nx - 0.5)).astype(np.float32)

    def sky_block(y0: int) -> None:
        rows_ = slice(y0, min(y0 + 512, lay.ny))
        img[rows_] += sky_x
        img[rows_] += (sky * (1 + gy * (np.arange(rows_.start, rows_.stop) / lay.ny - 0.5)))[:, None].astype(np.float32)
        img[rows_] *= cam.response[rows_]

    with ThreadPoolExecutor(threads or os.cpu_count()) as pool:
        list(pool.map(sky_block, range(0, lay.ny, 512)))

    # cosmic rays: deposited charge, no PSF, no flat
    full = layout(det, 1.0)
    n_cr = rng.poisson(sim.cosmics_full_frame * exptime / 60 * lay.nx * lay.ny / (full.nx * full.ny))
    cx, cy = rng.uniform(0, lay.nx, n_cr), rng.uniform(0, lay.ny, n_cr)
    length = np.minimum(rng.exponential(3.0, n_cr), 20)
    pa = rng.uniform(0, math.pi, n_cr)
    dep = [render.add_cosmic(img, cx[k], cy[k], length[k], pa[k], rng.lognormal(np.log(1500), 0.6), rng)
           for k in range(n_cr)]
    rc, dc = wcs.all_pix2world(cx, cy, 0) if n_cr else (cx, cy)
    record("cosmic", [f"CR{k + 1}" for k in range(n_cr)], rc, dc, cx, cy, np.nan, np.array(dep), length,
           np.degrees(pa))

    raw = read_out(cam, img, rng, exptime, threads=threads)
    del img
    hdr = _raw_header(det, lay, "object", mjd0, exptime)
    hdr["EXPID"] = expid
    hdr["FIELD"] = int(row["field_id"])
    hdr["OBJECT"] = f"F{int(row['field_id'])}"
    hdr["TOO"] = (bool(row["too"]), "target-of-opportunity exposure")
    hdr["AIRMASS"] = round(float(row["airmass"]), 4)
    approx = _wcs(night.out_dir / "truth" / f"{expid}.wcs.fits", "APPROX")
    hdr["RA"], hdr["DEC"] = (float(v) for v in approx.wcs.crval)
    hdr.update(approx.to_header())
    path = _write_raw(Path(dest) if dest else night.out_dir / "raw" / f"{expid}.fits", raw, hdr)

    tab = Table({k: np.concatenate([t[k] for t in truth]) for k in truth[0]})
    tab.meta["comment"] = "x, y: 0-based trimmed-image pixels; flux_e: electrons injected (cosmics: deposited)"
    tab.write(night.out_dir / "truth" / f"{expid}.fits", overwrite=True)
    return path


def _wcs(path: Path, ext) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.getheader(path, ext))


def _near(wcs: WCS, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Cheap preselection: within the image's half-diagonal (+ 5 arcmin) of its centre."""
    nx, ny = wcs.pixel_shape
    c_ra, c_dec = wcs.all_pix2world([(nx - 1) / 2], [(ny - 1) / 2], 0)
    radius = math.hypot(nx, ny) / 2 * proj_plane_pixel_scales(wcs)[0] * 1.05 + 5 / 60
    dra = (ra - c_ra[0] + 180) % 360 - 180
    d2 = (dra * np.cos(np.radians(dec))) ** 2 + (dec - c_dec[0]) ** 2
    return d2 < radius**2
