"""The pipeline's stages as pure functions of an exposure held in memory (no Kafka, no database).

One exposure runs a *front half* once — reduction → sources → astrometry → photometry →
quality — and then, per lane, a *back half* — subtraction → detection → crossmatch →
classify → alert. Lanes: ``qip`` (quick: 3×3-binned, ToO exposures only, first) and ``dip``
(deep: full resolution, every exposure).

Each stage function takes the exposure's in-memory state (:class:`Exposure`, and for the
back half its :class:`Lane`), the inputs the stream layer looked up for it (a template, the
field's known objects, light-curve histories …) and the configuration *sections* it needs
as keywords (``sources=SourcesConfig(...)``), never the whole settings. It fills the state
and returns a :class:`StageOutput`: metrics, flags, a status, the durable products to keep,
outgoing alerts, and the *state operations* (:class:`UpdateExposure`, :class:`ClaimTemplate`,
:class:`UpsertCandidate`, :class:`UpsertObject`, :class:`AddPhotometry`) that the stream layer
applies to the database (``agents.chain``). :data:`STAGES` lists them with the sections and
inputs each needs; ``agents.chain`` runs them for the stream, ``ast3stream process`` and
``ast3stream reduce``.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
from astropy.table import Table

from .image import Frame

LANES = ("qip", "dip")


class StageError(RuntimeError):
    """A stage cannot process this exposure; the reason goes to the dead-letter topic."""


# --------------------------------------------------------------------------------------
# the exposure in memory


@dataclass
class Lane:
    """One lane's back half: the template in force and what the stages made from it."""

    name: str
    template: Any = None            #: a :class:`TemplateInForce`
    aligned: Frame | None = None    #: the science frame on the template's pixel grid
    difference: Any = None          #: :class:`ast3stream.subtraction.Difference`
    candidates: Table | None = None
    stamps: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    model_version: str = ""

    @property
    def binning(self) -> int:
        return self.template.binning if self.template is not None else 1


@dataclass
class Exposure:
    """Everything the chain knows about one exposure, in memory.

    ``frame`` is the reduced image in electrons; astrometry attaches its WCS in place and
    photometry sets ``frame.sources`` to the calibrated source table.
    """

    exposure_id: str
    raw_path: str
    field_id: str | None = None
    mjd: float | None = None        #: start of the exposure (MJD UTC)
    too: bool = False
    namespace: str = ""
    frame: Frame | None = None
    sources: Table | None = None    #: every sep source
    stars: Table | None = None      #: the clean star list
    photometry: Table | None = None
    thumbnail: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    lanes: dict[str, Lane] = field(default_factory=dict)

    @property
    def lane_names(self) -> tuple[str, ...]:
        """The lanes this exposure takes, in the order they run."""
        return ("qip", "dip") if self.too else ("dip",)

    def lane(self, name: str) -> Lane:
        return self.lanes.setdefault(name, Lane(name))

    def mid_mjd(self, exptime_s: float) -> float:
        return (self.mjd or 0.0) + exptime_s / 2 / 86400


@dataclass(frozen=True)
class TemplateInForce:
    """The template a lane subtracts: the frame (binned for QIP) and what the database knows of it."""

    exposure_id: str
    frame: Frame
    binning: int
    key: str                        #: product-store key; with ``version`` the template cache's key
    version: float                  #: when it was registered (a rebuild gives a new version)
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# what a stage returns


@dataclass(frozen=True)
class UpdateExposure:
    status: str | None = None
    flags: tuple[str, ...] | None = None
    quality: dict | None = None


@dataclass(frozen=True)
class ClaimTemplate:
    """Make ``exposure_id`` the field's template of ``lane`` unless the field has one (atomic)."""

    field_id: str
    lane: str
    exposure_id: str
    key: str
    stats: dict


@dataclass(frozen=True)
class UpsertCandidate:
    row: dict


@dataclass(frozen=True)
class UpsertObject:
    row: dict


@dataclass(frozen=True)
class AddPhotometry:
    row: dict


Op = UpdateExposure | ClaimTemplate | UpsertCandidate | UpsertObject | AddPhotometry


@dataclass
class OutgoingAlert:
    """One candidate's packet: published to ``candidates`` always and to ``alerts*`` when ``passed``."""

    alert_id: str
    candidate_id: str
    object_id: str
    score: float
    passed: bool
    value: bytes                    #: the encoded Avro packet (embedded schema id; topics re-frame ``packet``)
    digest: str                     #: :func:`~ast3stream.alerts.packet_digest` (the whole packet, history included)
    notice: bytes | None = None     #: a GCN-style notice when the candidate qualifies
    packet: dict | None = None      #: the alert record, framed per topic by ``agents.chain``


@dataclass
class StageOutput:
    metrics: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    status: str = "done"
    ops: list = field(default_factory=list)
    products: dict[str, Any] = field(default_factory=dict)  #: name -> object for the product store
    alerts: list[OutgoingAlert] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  #: seconds per step of the stage (the workers' timings log)


def _legacy(**sections):
    """The whole-settings object that library functions not yet converted to sections still take."""
    from .config import Settings

    return Settings.model_construct(**sections)


def _finite(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


# --------------------------------------------------------------------------------------
# front half


def reduction(exp: Exposure, *, calibration, detector, reduction) -> StageOutput:
    """Overscan/bias, flat, bad pixels, saturation, cosmic rays, satellite trails."""
    from .reduction import reduce_raw

    steps: dict[str, float] = {}
    exp.frame = reduce_raw(Path(exp.raw_path), calibration, reduction, detector, timings=steps)
    return StageOutput(ops=[UpdateExposure(status="reduced")], steps=steps)


def sources(exp: Exposure, *, sources) -> StageOutput:
    """sep extraction and the clean star list; the image FWHM."""
    from .sources import clean_star_list, extract, image_fwhm

    exp.sources = extract(exp.frame, sources)
    exp.stars = clean_star_list(exp.sources, sources)
    return StageOutput(metrics={"fwhm_px": image_fwhm(exp.stars), "n_sources": len(exp.sources),
                                "n_stars": len(exp.stars)})


def astrometry(exp: Exposure, *, refcat, astrometry, detector) -> StageOutput:
    """Pattern match to the reference catalogue, TAN + SIP; the frame carries the WCS."""
    from .astrometry import AstrometryError, apply_wcs, solve

    try:
        wcs, stats = solve(exp.frame, exp.stars, refcat, astrometry, detector)
    except AstrometryError as exc:
        raise StageError(f"no WCS solution: {exc}") from exc
    apply_wcs(exp.frame, wcs)
    return StageOutput(flags=["bad_wcs"] if stats["rms_arcsec"] > astrometry.max_rms_arcsec else [],
                       metrics={"rms_arcsec": stats["rms_arcsec"], "n_astrom": stats.get("n_matched", np.nan)})


def photometry(exp: Exposure, *, refcat, photometry, sources, astrometry) -> StageOutput:
    """Aperture photometry, chi-square zero point, spatial residual, limiting magnitude."""
    from .photometry import calibrate

    exp.photometry, stats = calibrate(exp.frame, exp.sources, refcat, photometry, extraction=sources,
                                      match_radius_arcsec=astrometry.match_radius_arcsec)
    exp.frame.sources = exp.photometry
    return StageOutput(metrics={k: stats[k] for k in ("zp", "zp_err", "maglim") if k in stats})


def quality(exp: Exposure, *, quality, photometry, astrometry, detector) -> StageOutput:
    """Pearson r against the catalogue, thumbnail and cloud verdict, flags."""
    from .quality import assess

    q = assess(exp.frame, exp.photometry, dict(exp.metrics), quality, photometry=photometry, detector=detector,
               max_rms_arcsec=astrometry.max_rms_arcsec)
    exp.thumbnail = q["thumbnail_image"]
    metrics = {"pcc": q.get("pcc"), "cloud_prob": q.get("cloud_prob")}
    flags = sorted(set(exp.flags) | set(q.get("flags", [])))
    quality_row = {**exp.metrics, **{k: v for k, v in metrics.items() if v is not None}}
    return StageOutput(metrics=metrics, flags=list(q.get("flags", [])), products={"thumbnail": exp.thumbnail},
                       ops=[UpdateExposure(status="calibrated", flags=tuple(flags), quality=quality_row)])


def psf(exp: Exposure, *, photometry, sources) -> StageOutput:
    """PSF photometry with a position-dependent PSF: beside the alert path, never in front of it."""
    from .photometry.psf import psf_photometry

    table = psf_photometry(exp.frame, exp.photometry, photometry, extraction=sources)
    return StageOutput(products={"psf": table})


# --------------------------------------------------------------------------------------
# templates


def template_frames(exp: Exposure, *, detector) -> dict[str, Frame]:
    """The frames this exposure registers as its field's templates: ``dip`` (the calibrated
    frame, sources included) and ``qip`` (binned ``qip_binning`` × ``qip_binning``)."""
    from .templates import bin_frame

    return {"dip": exp.frame, "qip": bin_frame(exp.frame, detector.qip_binning)}


def template_stats(exp: Exposure, lane: str, *, detector) -> dict:
    """The numbers the template table keeps for a lane (FWHM in that lane's pixels)."""
    n = detector.qip_binning if lane == "qip" else 1
    fwhm = exp.metrics.get("fwhm_px")
    return dict(maglim=exp.metrics.get("maglim"), pcc=exp.metrics.get("pcc"), zp=exp.metrics.get("zp"),
                fwhm_px=fwhm / n if fwhm is not None else None)


def acceptable_template(exp: Exposure, *, template) -> tuple[bool, str]:
    """Whether this exposure may be its field's template (:func:`ast3stream.templates.is_acceptable`)."""
    from .templates import is_acceptable

    return is_acceptable(exp.metrics, exp.flags, _legacy(template=template))


# --------------------------------------------------------------------------------------
# back half (per lane)


def subtraction(exp: Exposure, lane: Lane, *, subtraction, detector) -> StageOutput:
    """Lanczos alignment onto the template's grid (QIP: aligned at full resolution, then
    binned: less correlated noise than binning first) and SFFT subtraction."""
    from .alignment import align
    from .subtraction import subtract
    from .subtraction.engine import lane_config

    tmpl = lane.template
    cfg = lane_config(_legacy(subtraction=subtraction, detector=detector), tmpl.binning)
    start = time.perf_counter()
    lane.aligned = align(exp.frame, tmpl.frame, cfg, binning=tmpl.binning)
    align_s = time.perf_counter() - start
    lane.difference = subtract(lane.aligned, tmpl.frame, cfg, template_key=(tmpl.key, tmpl.version))
    stats = lane.difference.stats
    metrics = {"x2nrm_mean": stats.get("x2nrm_mean"), "x2nrm_std": stats.get("x2nrm_std"),
               "noise_ratio": stats.get("noise_ratio"),
               "subtraction_s": stats.get("seconds"), "template_zp": tmpl.stats.get("zp"),
               "template_fwhm_px": tmpl.stats.get("fwhm_px")}
    lane.metrics.update({k: v for k, v in metrics.items() if _finite(v) is not None})
    return StageOutput(metrics=lane.metrics, steps={"align": align_s, **stats.get("steps", {})})


def prepare_template(tmpl: TemplateInForce, *, subtraction, detector) -> float:
    """Prepare the template the subtraction stage will use (sky, noise, sub-area stars, on the
    configured backend) and cache it under its key and version; with a per-pair kernel half-width
    (``subtraction.kernel_half_width_ratio``) also compile SFFT for the one its FWHM implies
    (:func:`~.subtraction.engine.warm_kernels`; the fixed width is compiled at worker start); seconds taken."""
    from .subtraction import prepare_template as prepare
    from .subtraction import use_gpu
    from .subtraction.engine import lane_config, warm_kernels

    start = time.perf_counter()
    cfg = lane_config(_legacy(subtraction=subtraction, detector=detector), tmpl.binning)
    prepare(tmpl.frame, cfg, key=(tmpl.key, tmpl.version))
    fwhm = _finite(tmpl.stats.get("fwhm_px"))
    if fwhm is not None and subtraction.kernel_half_width_ratio is not None:
        warm_kernels(tmpl.frame.shape, fwhm, cfg, use_gpu(subtraction.backend))
    return time.perf_counter() - start


def detection(exp: Exposure, lane: Lane, *, detection) -> StageOutput:
    """Candidates on the difference image with the paper's cuts; 4-channel stamps."""
    from .detection import detect

    fwhm = exp.metrics.get("fwhm_px", 3.0) / lane.binning
    lane.candidates, lane.stamps = detect(lane.difference, lane.aligned, lane.template.frame, fwhm,
                                          exp.metrics["zp"], detection, lane=lane.name, binning=lane.binning)
    return StageOutput(metrics={"n_candidates": len(lane.candidates)})


def crossmatch(exp: Exposure, lane: Lane, *, objects: Table, galaxies, asteroids, variable_stars, transients,
               crossmatch, detector) -> StageOutput:
    """Host galaxies, known asteroids (the night's :class:`~.catalogs.asteroids.AsteroidTable`),
    variable stars and known transients; association with the field's known ``objects``
    (``object_id``, ``ra``, ``dec``, ``n_det``, ``first_mjd``, ``last_mjd``) into transients;
    light-curve points (detections, forced photometry at known objects not detected now)."""
    from .crossmatch import crossmatch as xmatch
    from .lightcurves import associate, forced_photometry

    mjd = exp.mid_mjd(detector.exptime)
    cands = xmatch(lane.candidates, mjd, crossmatch, (detector.site_lon, detector.site_lat, detector.site_height),
                   galaxies=galaxies, asteroids=asteroids, variable_stars=variable_stars, transients=transients)
    idx = associate(cands, objects, crossmatch.object_radius_arcsec) if len(cands) else np.array([], int)
    ids = [str(objects["object_id"][i]) if i >= 0 else object_id(row["ra"], row["dec"]) for row, i in zip(cands, idx)]
    cands["object_id"] = np.array(ids, dtype="U32") if ids else np.array([], dtype="U32")
    lane.candidates = cands
    known = {str(o["object_id"]): o for o in objects}
    maglim = exp.metrics.get("maglim")
    ops: list = []
    seen: set[str] = set()
    for row in cands:
        if row["sign"] < 0 or row["ssnamenr"]:
            continue
        oid = str(row["object_id"])
        prev = known.get(oid)
        if oid not in seen:  # two candidates of one exposure on one object count as one epoch
            ops.append(UpsertObject(dict(
                object_id=oid, ra=float(row["ra"]), dec=float(row["dec"]), field_id=exp.field_id,
                n_det=int(prev["n_det"]) + 1 if prev else 1,
                first_mjd=min(float(prev["first_mjd"]), mjd) if prev else mjd,
                last_mjd=max(float(prev["last_mjd"]), mjd) if prev else mjd)))
        seen.add(oid)
        ops.append(AddPhotometry(dict(object_id=oid, exposure_id=exp.exposure_id, lane=lane.name, mjd=mjd,
                                      mag=float(row["mag"]), mag_err=float(row["mag_err"]), flux=float(row["flux"]),
                                      flux_err=float(row["flux_err"]), maglim=maglim, forced=False,
                                      detected=True)))
    others = [o for o in objects if str(o["object_id"]) not in seen]
    if others:
        from astropy.wcs import WCS

        x, y = WCS(lane.difference.header).all_world2pix([o["ra"] for o in others], [o["dec"] for o in others], 0)
        forced = forced_photometry(lane.difference, x, y, exp.metrics.get("fwhm_px", 3.0) / lane.binning,
                                   exp.metrics["zp"])
        for o, f in zip(others, forced):
            ops.append(AddPhotometry(dict(object_id=str(o["object_id"]), exposure_id=exp.exposure_id, lane=lane.name,
                                          mjd=mjd, mag=_finite(f["mag"]), mag_err=_finite(f["mag_err"]),
                                          flux=_finite(f["flux"]), flux_err=_finite(f["flux_err"]),
                                          maglim=_finite(f["upper_limit"]), forced=True,
                                          detected=bool(f["detected"]))))
    return StageOutput(ops=ops)


def object_id(ra: float, dec: float) -> str:
    """A new transient's id: survey prefix + a hash of its position (stable across replays)."""
    text = f"{round(ra, 5):.5f}{round(dec, 5):+.5f}"
    return "A3" + hashlib.sha1(text.encode()).hexdigest()[:10]


def classify(exp: Exposure, lane: Lane, *, model) -> StageOutput:
    """Real/bogus scores from the lane's classifier."""
    cands = lane.candidates
    fwhm = lane.difference.stats.get("psf_fwhm", exp.metrics.get("fwhm_px", 3.0) / lane.binning)
    cands["rb"] = model.score(lane.stamps, float(fwhm), np.asarray(cands["sign"]) > 0) if len(cands) \
        else np.array([], dtype=np.float32)
    lane.model_version = model.version
    return StageOutput()


def alert(exp: Exposure, lane: Lane, *, versions: dict, history: dict, too: dict | None, threshold: float,
          file_closed_at: float, alerts, detector, gw=None) -> StageOutput:
    """Avro packets with cutouts and light-curve history for every candidate (``passed`` when
    its score reaches ``threshold``); GCN-style notices for qualifying candidates of GW fields.

    ``history``: ``object_id`` → earlier light-curve rows; ``too``: the field's active ToO entry.
    """
    from .alerts import alert_id as make_alert_id
    from .alerts import build_alert, encode, packet_digest
    from .alerts.cutouts import CutoutMaker
    from .alerts.gcn import build_notice, validate_notice

    cands = lane.candidates
    mjd = exp.mid_mjd(detector.exptime)
    science, template, diff = lane.aligned, lane.template.frame, lane.difference
    size = alerts.cutout_size // lane.binning | 1
    out = StageOutput()
    now = time.time()
    makers = {name: CutoutMaker(img, hdr) for name, img, hdr in (("science", science.data, science.header),
                                                                ("template", template.data, template.header),
                                                                ("difference", diff.diff, diff.header))} \
        if len(cands) else {}
    for i, row in enumerate(cands):
        cand = {name: _plain(row[name]) for name in cands.colnames}
        aid = str(make_alert_id(exp.exposure_id, lane.name, int(i), versions))
        cand_id = f"{exp.exposure_id}:{lane.name}:{i}"
        out.ops.append(UpsertCandidate(dict(
            candidate_id=cand_id, exposure_id=exp.exposure_id, lane=lane.name, object_id=cand["object_id"], mjd=mjd,
            ra=cand["ra"], dec=cand["dec"], x=cand["x"], y=cand["y"], mag=cand["mag"], mag_err=cand["mag_err"],
            snr=cand["snr"], sign=int(cand["sign"]), score=cand["rb"], model_version=lane.model_version,
            maglim=exp.metrics.get("maglim"),
            extra={k: cand.get(k) for k in ("host_id", "host_sep_arcsec", "host_dist_mpc", "ssnamenr", "var_name",
                                            "tns_name")})))
        cutouts = {name: make(cand["x"], cand["y"], size) for name, make in makers.items()}
        prv = [p for p in history.get(cand["object_id"], []) if p["mjd"] < mjd]
        meta = dict(alert_id=aid, candidate_id=cand_id, exposure_id=exp.exposure_id, lane=lane.name,
                    field_id=exp.field_id, mjd=mjd, model_version=lane.model_version, too=exp.too,
                    exptime=detector.exptime, filter=detector.filter, stage_versions=versions,
                    metrics={**exp.metrics, **lane.metrics}, flags=list(exp.flags),
                    gw_event=too["event_id"] if too else None, gw_prob=too["prob"] if too else None,
                    namespace=exp.namespace, schema_version=alerts.schema_version,
                    timing=_timing(file_closed_at) if alerts.timestamps else None)
        packet = build_alert(cand, prv, cand, cutouts, meta)
        value = encode(packet)
        passed = cand["rb"] is not None and cand["rb"] >= threshold
        notice = None
        if passed and too and cand["rb"] >= alerts.gcn_min_score and cand["sign"] > 0:
            notice = build_notice(packet, too, gw=gw)   # with the kilonova assessment where the event has a map
            validate_notice(notice)
            import json

            notice = json.dumps(notice).encode()
        out.alerts.append(OutgoingAlert(alert_id=aid, candidate_id=cand_id, object_id=str(cand["object_id"]),
                                        score=float(cand["rb"]), passed=passed, value=value,
                                        digest=packet_digest(packet), notice=notice, packet=packet))
    summary = {"EXPID": exp.exposure_id, "LANE": lane.name, "FIELD": exp.field_id, "MJD-MID": mjd, "TOO": exp.too,
               "RBMODEL": lane.model_version, "NCAND": len(cands), "NALERT": sum(a.passed for a in out.alerts),
               "RBTHRESH": threshold, "FLAGS": ",".join(exp.flags),
               **{k.upper()[:8]: v for k, v in {**exp.metrics, **lane.metrics}.items()}}
    # only the planes the bundle writes, so the noise map, white fraction and the aligned mask go with the lane
    out.products["bundle"] = (summary, SimpleNamespace(diff=diff.diff, mask=diff.mask, header=diff.header),
                              SimpleNamespace(data=science.data, header=science.header), template, cands)
    out.metrics = {"n_alerts": float(sum(a.passed for a in out.alerts)), "alert_build_s": time.time() - now}
    return out


def _timing(file_closed_at: float) -> dict:
    built = time.time()
    return {"file_closed_at": file_closed_at, "alert_built_at": built, "latency_s": built - file_closed_at}


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------------------
# the stage table


@dataclass(frozen=True)
class Stage:
    """A stage: its function, whether it runs per lane, the configuration sections it takes
    (keyword = section name) and the inputs the stream layer must look up for it."""

    name: str
    func: Callable[..., StageOutput]
    per_lane: bool
    sections: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    version_section: str | None = None

    @property
    def section(self) -> str:
        return self.version_section or self.name


STAGES: tuple[Stage, ...] = (
    Stage("reduction", reduction, False, ("detector", "reduction"), ("calibration",)),
    Stage("sources", sources, False, ("sources",)),
    Stage("astrometry", astrometry, False, ("astrometry", "detector"), ("refcat",)),
    Stage("photometry", photometry, False, ("photometry", "sources", "astrometry"), ("refcat",)),
    Stage("quality", quality, False, ("quality", "photometry", "astrometry", "detector")),
    Stage("subtraction", subtraction, True, ("subtraction", "detector")),
    Stage("detection", detection, True, ("detection",)),
    Stage("crossmatch", crossmatch, True, ("crossmatch", "detector"), ("objects", "galaxies", "asteroids", "variable_stars", "transients")),
    Stage("classify", classify, True, (), ("model",)),
    Stage("alert", alert, True, ("alerts", "detector", "gw"),
          ("versions", "history", "too", "threshold", "file_closed_at"), version_section="alerts"),
)
#: runs after the alerts of every lane, at the lowest priority
SLOW = Stage("psf", psf, False, ("photometry", "sources"), version_section="photometry")
FRONT = tuple(s for s in STAGES if not s.per_lane)
BACK = tuple(s for s in STAGES if s.per_lane)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")
