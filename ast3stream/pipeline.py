"""The pipeline's stages as plain functions on events and files (no Kafka here).

Each stage takes the :class:`~ast3stream.events.StageEvent` of the previous stage and a
:class:`Context`, does its science through the library, writes its products under
``<products>/<namespace>/<exposure_id>/<lane>/`` and returns a :class:`StageResult`: the
events for the next stage and any outgoing messages (alerts, notices). The agents in
``agents/`` publish those; :func:`process_exposure` runs the same chain in-process for
notebooks and the ``ast3stream process`` command.

Lanes: ``dip`` (deep, full resolution, every exposure) and ``qip`` (quick, 3x3-binned,
ToO exposures only). A ToO exposure is reduced once on the quick lane and forks into
both lanes after the quality stage.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .config import Settings
from .db import Database
from .events import ExposureEvent, StageEvent
from .image import Frame

LANES = ("qip", "dip")


class StageError(RuntimeError):
    """A stage cannot process this exposure; the reason goes to the dead-letter topic."""


class Deferred(RuntimeError):
    """Not yet: the event must be offered again after ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: float = 1.0):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class Message:
    """An outgoing message that is not a stage event: ``name`` is the topic name without prefix."""

    name: str
    key: bytes
    value: bytes
    on_published: Callable[[], None] | None = None


@dataclass
class StageResult:
    events: list[StageEvent] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)


class Context:
    """Settings, database and lazily loaded, shared resources (catalogues, models)."""

    def __init__(self, cfg: Settings, db: Database | None = None):
        self.cfg = cfg
        self.db = db or Database.from_settings(cfg)
        self._lock = threading.Lock()
        self._cache: dict = {}

    def _get(self, key, factory):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = factory()
            return self._cache[key]

    def products(self, ev: StageEvent) -> Path:
        ns = self.db.namespace or "live"
        path = self.cfg.products_dir / ns / ev.exposure_id / ev.lane
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def calibration(self):
        from .reduction import Calibration

        def load():
            d = self.cfg.calib_dir
            if (d / "master_bias.fits").exists() or any(d.glob("master*.fits")):
                return Calibration.load(d)
            bias, flats = sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits"))
            if bias and flats:
                cal = Calibration.build(bias, flats, self.cfg)
                cal.save(d)
                return cal
            return None
        return self._get("calib", load)

    @property
    def refcat(self):
        from .catalogs.refcat import RefCat
        return self._get("refcat", lambda: RefCat.from_file(self.cfg.refcat_path))

    @property
    def galaxies(self):
        from .catalogs.galaxies import GalaxyCatalog
        path = self.cfg.galaxies_path
        return self._get("galaxies", lambda: GalaxyCatalog.from_csv(path) if path.exists() else None)

    @property
    def orbits(self):
        from .catalogs.mpcorb import read_mpcorb
        path = self.cfg.mpcorb_path
        return self._get("orbits", lambda: read_mpcorb(path) if path.exists() else None)

    def classifier(self, lane: str):
        from .classify import RealBogus
        return self._get(("rb", lane), lambda: RealBogus.load(lane, device=self.cfg.classify.device))


# --------------------------------------------------------------------------------------
# stages


def _begin(ev: StageEvent, ctx: Context, stage: str) -> float:
    return time.time()


def _finish(ev: StageEvent, ctx: Context, stage: str, version: str, start: float, status: str = "done",
            **changes) -> StageEvent:
    out = ev.next(stage, version, start)
    for key, value in changes.items():
        if key == "products":
            out.products.update({k: str(v) for k, v in value.items()})
        elif key == "metrics":
            out.metrics.update({k: float(v) for k, v in value.items() if v is not None and np.isfinite(v)})
        elif key == "flags":
            out.flags = sorted(set(out.flags) | set(value))
    ctx.db.record_stage(ev.exposure_id, ev.lane, stage, version, start, out.timings[-1]["end"], status)
    return out


def _wait_for_earlier(ev: StageEvent, ctx: Context, stage: str, earlier: list[str], max_wait_s: float,
                      why: str) -> None:
    """Raise :class:`Deferred` while ``earlier`` work of the field is pending, for at most
    ``max_wait_s`` from this stage's first deferral (recorded in the database)."""
    if earlier and time.time() - ctx.db.deferred_since(ev.exposure_id, ev.lane, stage) < max_wait_s:
        raise Deferred(f"field {ev.field_id}: {', '.join(earlier)} {why}")


def reduction(ev: StageEvent, ctx: Context) -> StageResult:
    """Overscan/bias, flat, bad pixels, saturation, cosmic rays, satellite trails."""
    from .reduction import reduce_raw

    start = _begin(ev, ctx, "reduction")
    frame = reduce_raw(Path(ev.raw_path), ctx.calibration, ctx.cfg)
    path = frame.write(ctx.products(ev) / "reduced.fits")
    ctx.db.update_exposure(ev.exposure_id, status="reduced")
    return StageResult([_finish(ev, ctx, "reduction", ctx.cfg.reduction.version, start,
                                products={"reduced": path})])


def sources(ev: StageEvent, ctx: Context) -> StageResult:
    """sep extraction and the clean star list; the image FWHM."""
    from .sources import clean_star_list, extract, image_fwhm

    start = _begin(ev, ctx, "sources")
    frame = Frame.read(ev.product("reduced"))
    table = extract(frame, ctx.cfg)
    clean = clean_star_list(table, ctx.cfg)
    out = ctx.products(ev)
    table.write(out / "sources.fits", overwrite=True)
    clean.write(out / "stars.fits", overwrite=True)
    return StageResult([_finish(ev, ctx, "sources", ctx.cfg.sources.version, start,
                                products={"sources": out / "sources.fits", "stars": out / "stars.fits"},
                                metrics={"fwhm_px": image_fwhm(clean), "n_sources": len(table),
                                         "n_stars": len(clean)})])


def astrometry(ev: StageEvent, ctx: Context) -> StageResult:
    """Pattern match to the reference catalogue, TAN + SIP; the calibrated frame carries the WCS."""
    from .astrometry import AstrometryError, apply_wcs, solve

    start = _begin(ev, ctx, "astrometry")
    frame = Frame.read(ev.product("reduced"))
    stars = Table.read(ev.product("stars"))
    try:
        wcs, stats = solve(frame, stars, ctx.refcat, ctx.cfg)
    except AstrometryError as exc:
        ctx.db.update_exposure(ev.exposure_id, status="failed", flags=["bad_wcs"])
        raise StageError(f"no WCS solution: {exc}") from exc
    apply_wcs(frame, wcs)
    frame.sources = Table.read(ev.product("sources"))
    flags = ["bad_wcs"] if stats["rms_arcsec"] > ctx.cfg.astrometry.max_rms_arcsec else []
    path = frame.write(ctx.products(ev) / "calibrated.fits")
    return StageResult([_finish(ev, ctx, "astrometry", ctx.cfg.astrometry.version, start,
                                products={"calibrated": path}, flags=flags,
                                metrics={"rms_arcsec": stats["rms_arcsec"],
                                         "n_astrom": stats.get("n_matched", np.nan)})])


def photometry(ev: StageEvent, ctx: Context) -> StageResult:
    """Aperture photometry, chi-square zero point, spatial residual, limiting magnitude."""
    from .photometry import calibrate

    start = _begin(ev, ctx, "photometry")
    frame = Frame.read(ev.product("calibrated"))
    table, stats = calibrate(frame, frame.sources, ctx.refcat, ctx.cfg)
    path = ctx.products(ev) / "photometry.fits"
    table.write(path, overwrite=True)
    return StageResult([_finish(ev, ctx, "photometry", ctx.cfg.photometry.version, start,
                                products={"photometry": path},
                                metrics={k: stats[k] for k in ("zp", "zp_err", "maglim") if k in stats})])


def psf_photometry(ev: StageEvent, ctx: Context) -> StageResult:
    """PSF photometry on the slow lane: runs beside the alert path, never in front of it."""
    from .photometry.psf import psf_photometry as run_psf

    start = _begin(ev, ctx, "psf")
    frame = Frame.read(ev.product("calibrated"))
    table = run_psf(frame, Table.read(ev.product("photometry")), ctx.cfg)
    path = ctx.products(ev) / "psf_photometry.fits"
    table.write(path, overwrite=True)
    _finish(ev, ctx, "psf", ctx.cfg.photometry.version, start, products={"psf": path})
    return StageResult()


def quality(ev: StageEvent, ctx: Context) -> StageResult:
    """Pearson r against the catalogue, thumbnail and cloud verdict, flags; forks ToO into QIP and DIP."""
    from .quality import assess

    start = _begin(ev, ctx, "quality")
    frame = Frame.read(ev.product("calibrated"))
    phot = Table.read(ev.product("photometry"))
    q = assess(frame, phot, ctx.refcat, dict(ev.metrics), ctx.cfg, thumbnail_dir=ctx.products(ev))
    metrics = {"pcc": q.get("pcc")}
    if q.get("cloud_prob") is not None:
        metrics["cloud_prob"] = q["cloud_prob"]
    out = _finish(ev, ctx, "quality", ctx.cfg.quality.version, start, metrics=metrics,
                  flags=q.get("flags", []), products={k: v for k, v in q.items() if k.startswith("thumbnail") and v})
    ctx.db.update_exposure(ev.exposure_id, status="calibrated", flags=out.flags,
                           quality={k: v for k, v in out.metrics.items()})
    events = [out]
    if ev.too and ev.lane == "qip":
        dip = StageEvent(**{**out.__dict__, "lane": "dip", "products": dict(out.products),
                            "metrics": dict(out.metrics), "flags": list(out.flags),
                            "versions": dict(out.versions), "timings": list(out.timings)})
        dip.event_id = out.event_id[:-4] + "dip0"
        events.append(dip)
    return StageResult(events)


def subtraction(ev: StageEvent, ctx: Context) -> StageResult:
    """Template lookup (or registration), Lanczos alignment, SFFT subtraction, noise check."""
    from .alignment import align
    from .subtraction import subtract
    from .templates import is_acceptable

    start = _begin(ev, ctx, "subtraction")
    cfg = ctx.cfg
    tmpl = ctx.db.template(ev.field_id, ev.lane) if ev.field_id else None
    if tmpl is not None and tmpl["exposure_id"] == ev.exposure_id:
        tmpl = None  # redelivered after a crash: this exposure is the template, judged again below
    if tmpl is None and ev.mjd is not None:
        # the template is the field's EARLIEST acceptable image: an exposure that overtook the
        # field's earlier ones (a ToO, a second worker) waits until they have been judged, for
        # at most template.max_wait_s from its first deferral
        _wait_for_earlier(ev, ctx, "subtraction", ctx.db.earlier_undecided(ev.field_id, ev.mjd),
                          cfg.template.max_wait_s, "not judged for the template yet")
    if tmpl is None:
        ok, why = is_acceptable(ev.metrics, ev.flags, cfg)
        if ok:
            tmpl = _register_template(ev, ctx)
        if tmpl is None or tmpl["exposure_id"] == ev.exposure_id:
            status = "template" if ok else "no_template"
            if ev.lane == "dip" or not ev.too:
                ctx.db.update_exposure(ev.exposure_id, status=status)
            _finish(ev, ctx, "subtraction", cfg.subtraction.version, start, status=status)
            return StageResult()  # the template itself yields no candidates
    science = Frame.read(ev.product("calibrated"))
    template = Frame.read(tmpl["path"])
    # QIP: aligned at full resolution, then binned (less correlated noise than binning first)
    aligned = align(science, template, cfg, binning=cfg.detector.qip_binning if ev.lane == "qip" else 1)
    diff = subtract(aligned, template, cfg)
    out = ctx.products(ev)
    aligned.write(out / "aligned.fits")
    _write_difference(diff, out / "difference.fits")
    metrics = {"x2nrm_mean": diff.stats.get("x2nrm_mean"), "x2nrm_std": diff.stats.get("x2nrm_std"),
               "subtraction_s": diff.stats.get("seconds"), "template_zp": tmpl.get("zp"),
               "template_fwhm_px": tmpl.get("fwhm_px")}
    return StageResult([_finish(ev, ctx, "subtraction", cfg.subtraction.version, start,
                                products={"aligned": out / "aligned.fits", "difference": out / "difference.fits",
                                          "template": tmpl["path"]},
                                metrics={k: v for k, v in metrics.items() if v is not None})])


def _register_template(ev: StageEvent, ctx: Context) -> dict:
    """Claim this exposure as the field's template for both lanes (QIP: a 3x3-binned copy)."""
    from .templates import bin_frame

    frame = Frame.read(ev.product("calibrated"))
    stats = dict(maglim=ev.metrics.get("maglim"), pcc=ev.metrics.get("pcc"), zp=ev.metrics.get("zp"))
    dip = ctx.db.claim_template(ev.field_id, "dip", ev.exposure_id, ev.product("calibrated"),
                                fwhm_px=ev.metrics.get("fwhm_px"), **stats)
    qip_path = ctx.cfg.products_dir / (ctx.db.namespace or "live") / "templates" / f"{ev.field_id}_qip.fits"
    if dip["exposure_id"] == ev.exposure_id and not qip_path.exists():
        bin_frame(frame, ctx.cfg.detector.qip_binning).write(qip_path)
    n = ctx.cfg.detector.qip_binning
    qip = ctx.db.claim_template(ev.field_id, "qip", dip["exposure_id"], str(qip_path),
                                fwhm_px=(ev.metrics.get("fwhm_px") or np.nan) / n, **stats)
    return dip if ev.lane == "dip" else qip


def rebuild_template(cfg: Settings, db: Database, exposure_id: str) -> dict:
    """Make a calibrated exposure the template of its field (both lanes), replacing any other."""
    from .templates import bin_frame

    exp = db.rows("exposures", exposure_id=exposure_id)[0]
    ns = db.namespace or "live"
    path = next((cfg.products_dir / ns / exposure_id / lane / "calibrated.fits" for lane in ("dip", "qip")
                 if (cfg.products_dir / ns / exposure_id / lane / "calibrated.fits").exists()), None)
    if path is None:
        raise FileNotFoundError(f"{exposure_id} has no calibrated image under {cfg.products_dir / ns}")
    q = exp["quality"] or {}
    stats = dict(maglim=q.get("maglim"), pcc=q.get("pcc"), zp=q.get("zp"))
    db.set_template(exp["field_id"], "dip", exposure_id, str(path), fwhm_px=q.get("fwhm_px"), **stats)
    qip_path = cfg.products_dir / ns / "templates" / f"{exp['field_id']}_qip.fits"
    n = cfg.detector.qip_binning
    bin_frame(Frame.read(path), n).write(qip_path)
    db.set_template(exp["field_id"], "qip", exposure_id, str(qip_path),
                    fwhm_px=(q.get("fwhm_px") or np.nan) / n, **stats)
    return db.template(exp["field_id"], "dip")


def _write_difference(diff, path: Path) -> None:
    hdus = fits.HDUList([fits.PrimaryHDU(),
                         fits.ImageHDU(diff.diff.astype(np.float32), diff.header, name="DIFF"),
                         fits.ImageHDU(diff.noise.astype(np.float32), diff.header, name="NOISE"),
                         fits.ImageHDU(diff.mask.astype(np.uint16), name="MASK")])
    for k, v in diff.stats.items():
        if isinstance(v, (int, float, str, bool)) and len(k) <= 8:
            hdus[0].header[k.upper()] = v
    tmp = path.with_name(path.name + ".part")
    hdus.writeto(tmp, overwrite=True)
    tmp.replace(path)


def read_difference(path: str | Path):
    from .subtraction import Difference

    with fits.open(path, memmap=False) as hdul:
        stats = {k.lower(): v for k, v in hdul[0].header.items() if k not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND")}
        return Difference(diff=np.asarray(hdul["DIFF"].data, dtype=np.float32),
                          noise=np.asarray(hdul["NOISE"].data, dtype=np.float32),
                          mask=np.asarray(hdul["MASK"].data, dtype=np.uint16),
                          header=hdul["DIFF"].header.copy(), stats=stats)


def detection(ev: StageEvent, ctx: Context) -> StageResult:
    """Candidates on the difference image with the paper's cuts; 4-channel stamps."""
    from .detection import detect

    start = _begin(ev, ctx, "detection")
    diff = read_difference(ev.product("difference"))
    science = Frame.read(ev.product("aligned"))
    template = Frame.read(ev.product("template"))
    fwhm = ev.metrics.get("fwhm_px", 3.0) / (ctx.cfg.detector.qip_binning if ev.lane == "qip" else 1)
    cands, stamps = detect(diff, science, template, fwhm, ev.metrics["zp"], ctx.cfg, ev.lane)
    out = ctx.products(ev)
    cands.write(out / "candidates.fits", overwrite=True)
    np.save(out / "stamps.npy", stamps)
    return StageResult([_finish(ev, ctx, "detection", ctx.cfg.detection.version, start,
                                products={"candidates": out / "candidates.fits", "stamps": out / "stamps.npy"},
                                metrics={"n_candidates": len(cands)})])


def crossmatch(ev: StageEvent, ctx: Context) -> StageResult:
    """Host galaxies, known asteroids; association into transient objects; forced photometry."""
    from .crossmatch import crossmatch as xmatch
    from .lightcurves import associate

    start = _begin(ev, ctx, "crossmatch")
    cfg = ctx.cfg
    if ev.field_id and ev.mjd is not None:
        # associate in observing order (see Database.unassociated_before), waiting at most order_wait_s
        _wait_for_earlier(ev, ctx, "crossmatch", ctx.db.unassociated_before(ev.field_id, ev.mjd, ev.exposure_id,
                                                                            ev.lane),
                          cfg.crossmatch.order_wait_s, "not associated yet")
    cands = Table.read(ev.product("candidates"))
    mjd = (ev.mjd or 0.0) + cfg.detector.exptime / 2 / 86400
    cands = xmatch(cands, mjd, cfg, galaxies=ctx.galaxies, asteroids=ctx.orbits)
    objects = Table(rows=[(o["object_id"], o["ra"], o["dec"]) for o in ctx.db.objects_near(ev.field_id)],
                    names=("object_id", "ra", "dec"), dtype=(str, float, float))
    idx = associate(cands, objects, cfg.crossmatch.object_radius_arcsec) if len(cands) else np.array([], int)
    object_ids = []
    for row, i in zip(cands, idx):
        oid = objects["object_id"][i] if i >= 0 else _object_id(row["ra"], row["dec"], ev)
        object_ids.append(str(oid))
    cands["object_id"] = np.array(object_ids, dtype="U32") if object_ids else np.array([], dtype="U32")
    _update_light_curves(ev, ctx, cands, mjd)
    path = ctx.products(ev) / "crossmatched.fits"
    cands.write(path, overwrite=True)
    return StageResult([_finish(ev, ctx, "crossmatch", cfg.crossmatch.version, start,
                                products={"crossmatched": path})])


def _object_id(ra: float, dec: float, ev: StageEvent) -> str:
    """A new transient's name: survey prefix + discovery year + position hash (stable across replays)."""
    text = f"{round(ra, 5):.5f}{round(dec, 5):+.5f}"
    return "A3" + hashlib.sha1(text.encode()).hexdigest()[:10]


def _update_light_curves(ev: StageEvent, ctx: Context, cands: Table, mjd: float) -> None:
    from .lightcurves import forced_photometry

    maglim = ev.metrics.get("maglim")
    seen = set()
    for row in cands:
        if row["sign"] < 0 or row["ssnamenr"]:
            continue
        oid = str(row["object_id"])
        seen.add(oid)
        prev = {o["object_id"]: o for o in ctx.db.objects_near(ev.field_id)}.get(oid)
        ctx.db.upsert_object(dict(object_id=oid, ra=float(row["ra"]), dec=float(row["dec"]), field_id=ev.field_id,
                                  n_det=(prev["n_det"] + 1) if prev else 1,
                                  first_mjd=min(prev["first_mjd"], mjd) if prev else mjd,
                                  last_mjd=max(prev["last_mjd"], mjd) if prev else mjd))
        ctx.db.add_photometry(dict(object_id=oid, exposure_id=ev.exposure_id, lane=ev.lane, mjd=mjd,
                                   mag=float(row["mag"]), mag_err=float(row["mag_err"]), flux=float(row["flux"]),
                                   flux_err=float(row["flux_err"]), maglim=maglim, forced=False, detected=True))
    # forced photometry at known objects of this field that were not detected now
    others = [o for o in ctx.db.objects_near(ev.field_id) if o["object_id"] not in seen]
    if not others or "difference" not in ev.products:
        return
    from astropy.wcs import WCS

    diff = read_difference(ev.product("difference"))
    x, y = WCS(diff.header).all_world2pix([o["ra"] for o in others], [o["dec"] for o in others], 0)
    fwhm = ev.metrics.get("fwhm_px", 3.0) / (ctx.cfg.detector.qip_binning if ev.lane == "qip" else 1)
    forced = forced_photometry(diff, x, y, fwhm, ev.metrics["zp"])
    for o, f in zip(others, forced):
        ctx.db.add_photometry(dict(object_id=o["object_id"], exposure_id=ev.exposure_id, lane=ev.lane, mjd=mjd,
                                   mag=_finite(f["mag"]), mag_err=_finite(f["mag_err"]), flux=_finite(f["flux"]),
                                   flux_err=_finite(f["flux_err"]), maglim=_finite(f["upper_limit"]),
                                   forced=True, detected=bool(f["detected"])))


def _finite(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def classify(ev: StageEvent, ctx: Context) -> StageResult:
    """Real/bogus scores from the rotation-invariant ResNet-18 of the lane."""
    start = _begin(ev, ctx, "classify")
    cands = Table.read(ev.product("crossmatched"))
    stamps = np.load(ev.product("stamps"))
    model = ctx.classifier(ev.lane)
    cands["rb"] = model.score(stamps) if len(cands) else np.array([], dtype=np.float32)
    cands.meta["RBMODEL"] = model.version
    path = ctx.products(ev) / "classified.fits"
    cands.write(path, overwrite=True)
    out = _finish(ev, ctx, "classify", ctx.cfg.classify.version, start, products={"classified": path})
    out.versions["rb_model"] = model.version
    return StageResult([out])


def alert(ev: StageEvent, ctx: Context) -> StageResult:
    """Avro alert packets with cutouts and light-curve history; GCN notices for GW fields."""
    from .alerts import alert_id as make_alert_id
    from .alerts import build_alert, encode, make_cutout
    from .alerts.gcn import build_notice, validate_notice

    start = _begin(ev, ctx, "alert")
    cfg = ctx.cfg
    cands = Table.read(ev.product("classified"))
    model_version = cands.meta.get("RBMODEL", ev.versions.get("rb_model", ""))
    science = Frame.read(ev.product("aligned"))
    template = Frame.read(ev.product("template"))
    diff = read_difference(ev.product("difference"))
    # the GW association of a ToO exposure (decided when it was ingested, so a replay agrees)
    too = ctx.db.too_event_for_field(ev.field_id) if ev.too else None
    mjd = (ev.mjd or 0.0) + cfg.detector.exptime / 2 / 86400
    messages: list[Message] = []
    for i, row in enumerate(cands):
        if row["rb"] < cfg.alerts.min_score:
            continue
        cand = {name: _plain(row[name]) for name in cands.colnames}
        aid = str(make_alert_id(ev.exposure_id, ev.lane, int(i), ev.versions))
        cand_id = f"{ev.exposure_id}:{ev.lane}:{i}"
        ctx.db.upsert_candidate(dict(candidate_id=cand_id, exposure_id=ev.exposure_id, lane=ev.lane,
                                     object_id=cand["object_id"], mjd=mjd, ra=cand["ra"], dec=cand["dec"],
                                     x=cand["x"], y=cand["y"], mag=cand["mag"], mag_err=cand["mag_err"],
                                     snr=cand["snr"], sign=int(cand["sign"]), score=cand["rb"],
                                     model_version=model_version, maglim=ev.metrics.get("maglim"),
                                     extra={k: cand.get(k) for k in ("host_id", "host_sep_arcsec", "ssnamenr")}))
        if ctx.db.alert_published(aid):
            continue  # redelivered: this alert already went out
        size = cfg.alerts.cutout_size // (cfg.detector.qip_binning if ev.lane == "qip" else 1) | 1
        cutouts = {name: make_cutout(img, science.header if name != "difference" else diff.header,
                                     cand["x"], cand["y"], size)
                   for name, img in (("science", science.data), ("template", template.data),
                                     ("difference", diff.diff))}
        # history = the object's earlier epochs known when the alert is made
        prv = [p for p in ctx.db.light_curve(cand["object_id"]) if p["mjd"] < mjd]
        meta = dict(alert_id=aid, candidate_id=cand_id, exposure_id=ev.exposure_id, lane=ev.lane,
                    field_id=ev.field_id, mjd=mjd, model_version=model_version, too=ev.too,
                    exptime=cfg.detector.exptime, filter=cfg.detector.filter,
                    stage_versions=ev.versions, metrics=dict(ev.metrics), flags=list(ev.flags),
                    gw_event=too["event_id"] if too else None, gw_prob=too["prob"] if too else None,
                    namespace=ev.namespace)
        packet = build_alert(cand, prv, cand, cutouts, meta)
        value = encode(packet)
        key = str(cand["object_id"]).encode()
        digest = hashlib.sha256(value).hexdigest()  # history included: association runs in observing order

        def mark(aid=aid, cand_id=cand_id, oid=cand["object_id"], score=cand["rb"], digest=digest):
            ctx.db.record_alert(dict(alert_id=aid, candidate_id=cand_id, object_id=oid, exposure_id=ev.exposure_id,
                                     lane=ev.lane, score=score, digest=digest,
                                     published_at=time.time(), latency_s=time.time() - ev.file_closed_at))
        messages.append(Message("alerts", key, value, mark))
        messages.append(Message(f"alerts.{ev.lane}", key, value))
        if too and cand["rb"] >= cfg.alerts.gcn_min_score and cand["sign"] > 0:
            notice = build_notice(packet, too)
            validate_notice(notice)
            messages.append(Message("gcn", key, json.dumps(notice).encode()))
    from .products import write_bundle

    summary = {"EXPID": ev.exposure_id, "LANE": ev.lane, "FIELD": ev.field_id, "MJD-MID": mjd, "TOO": ev.too,
               "RBMODEL": model_version, "NCAND": len(cands), "FLAGS": ",".join(ev.flags),
               **{k.upper()[:8]: v for k, v in ev.metrics.items()}}
    write_bundle(ctx.products(ev) / f"{ev.exposure_id}_{ev.lane}.fits", summary, diff, science, template, cands)
    ctx.db.update_exposure(ev.exposure_id, status="alerted")
    _finish(ev, ctx, "alert", cfg.alerts.version, start, metrics={"n_alerts": len(messages)})
    return StageResult(messages=messages)


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


@dataclass(frozen=True)
class Stage:
    name: str
    func: Callable[[StageEvent, Context], StageResult]
    source: str  # the stage whose output this stage consumes ("ingest" = exposures)


STAGES: tuple[Stage, ...] = (
    Stage("reduction", reduction, "ingest"),
    Stage("sources", sources, "reduction"),
    Stage("astrometry", astrometry, "sources"),
    Stage("photometry", photometry, "astrometry"),
    Stage("quality", quality, "photometry"),
    Stage("subtraction", subtraction, "quality"),
    Stage("detection", detection, "subtraction"),
    Stage("crossmatch", crossmatch, "detection"),
    Stage("classify", classify, "crossmatch"),
    Stage("alert", alert, "classify"),
)
SLOW_STAGES: tuple[Stage, ...] = (Stage("psf", psf_photometry, "photometry"),)


def ingest(path: str | Path, ctx: Context, file_closed_at: float | None = None) -> ExposureEvent:
    """The exposure event for a complete raw file (what the watcher publishes)."""
    from .rawfile import describe

    return describe(Path(path), ctx, file_closed_at)


def process_exposure(path: str | Path, ctx: Context, lanes: tuple[str, ...] | None = None) -> list[Message]:
    """Run every stage on one raw file in-process (no broker); return the outgoing messages.

    Each outgoing message's ``on_published`` hook is called, as the alert agent does after
    the broker acknowledges it.
    """
    exp = ingest(path, ctx)
    ctx.db.register_exposure(exp)
    ctx.db.mark_published(exp.exposure_id)
    queue = [StageEvent.from_exposure(exp, "qip" if exp.too else "dip")]
    by_source = {s.source: s for s in STAGES}
    messages: list[Message] = []
    while queue:
        ev = queue.pop(0)
        stage = by_source.get(ev.stage)
        if stage is None:
            continue
        result = stage.func(ev, ctx)
        queue.extend(e for e in result.events if lanes is None or e.lane in lanes)
        for m in result.messages:
            if m.on_published:
                m.on_published()
        messages.extend(result.messages)
    return messages
