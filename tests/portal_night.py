"""The portal tests' survey database, built in seconds from real data in ../shared.

No pipeline runs here (that needs SFFT compiled in a new process: minutes); instead the
database and the product store are filled the way the stream fills them (the project's
own ``Database`` methods, product keys, bundles, thumbnails and alert packets), from real
ZTF alerts:

* the night of 2023-10-12: 24 alerts from five readout quadrants of one ZTF exposure
  (RA 47°, Dec +9°, many known asteroids, two low real/bogus scores), each quadrant one
  exposure; they lie near the edge of the 90 % region of S240116o (credible levels 0.85 to
  0.94), whose real LVK notice and sky map are ingested (``agents.gw.ingest``, as ``too
  ingest`` does) onto an AST3-3 field grid over a 20 x 25 deg footprint around them, so
  their field is on the ToO list, those exposures are ToO exposures and their candidates
  are in a GW field (about half inside the 90 % region);
* ZTF21abiuvdk: 34 alerts of one object over two months (2021-07-01 to 09-04), each an
  exposure of its own: the object's light curve (detections) plus the non-detections of its
  last alert's history (upper limits).

Each exposure's lane bundle holds the alerts' real 63x63 science, template and difference
stamps side by side (candidate *i* at x = 63 i + 31, y = 31); raw files are small FITS files
with the exposure's header (one ``OBJECT`` carries a ``<script>``). Stage timings and alert
latencies are made up (plausible values), they are stream bookkeeping.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from astropy.io import fits
from astropy.table import Table

from agents.chain import PRODUCT_FILES, Resources, writer
from agents.gw import ingest
from agents.portal.data import BACK_STAGES, FRONT_STAGES
from ast3stream.alerts import build_alert, encode, read_alerts, read_cutout, write_avro_file
from ast3stream.config import Settings
from ast3stream.gw.fields import make_grid
from ast3stream.gw.too import field_size
from ast3stream.products import write_bundle
from ast3stream.rawfile import describe

NIGHT = "alerts/ztf/20231012"
SERIES = "alerts/more/ztf/pitt-google-broker/docs/source/working-notes/troyraen/SuperNNova/ZTF21abiuvdk"
S240116O = "gw/lvk/S240116o-preliminary_fink-modified-times.json"
SCRIPT = "<script>window.pwned = 1</script>"
STAMP = 63


def settings(root: Path, **sections) -> Settings:
    return Settings.load(None, paths={"data_dir": root, "fields": root / "fields.csv"},
                         gw={"min_field_probability": 1e-5, "max_fields": 500}, **sections)


def build(cfg: Settings, shared: Path) -> dict:
    """Fill ``cfg``'s database and product store; return what the tests check against."""
    res = Resources(cfg)
    w, h = field_size(cfg.detector, cfg.gw)
    grid = make_grid(w, h, 0, 20, prefix="F")
    grid = grid[(grid["ra"] > 35) & (grid["ra"] < 60)]  # the survey's footprint: 20 x 25 deg
    cfg.fields_path.parent.mkdir(parents=True, exist_ok=True)
    grid.write(cfg.fields_path, format="ascii.csv", overwrite=True)
    outcome = ingest(shared / S240116O, res.db, cfg, origin="file", enforce_policy=False, fields=grid)
    notice, plan = outcome.notice, outcome.fields
    night = [v for v in read_alerts(shared / NIGHT)]
    series = sorted(read_alerts(shared / SERIES), key=lambda v: v.mjd)
    ra, dec = np.mean([v.ra for v in night]), np.mean([v.dec for v in night])
    field = str(grid["field_id"][np.argmin(np.hypot((grid["ra"] - ra) * np.cos(np.radians(dec)), grid["dec"] - dec))])
    too_field = field in {str(f) for f in plan["field_id"]}
    exposures: dict[str, list] = {}
    for v in night:
        exposures.setdefault(f"ztf_{v.record['candidate']['pid']}", []).append(v)
    for v in series:
        exposures.setdefault(f"ztf_{v.record['candidate']['pid']}", []).append(v)
    raw = cfg.paths.data_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {"field": field, "too_field": too_field, "event": notice.superevent_id, "night_exposures": [],
           "series": series[0].object_id, "series_epochs": len(series), "script_exposure": None,
           "alerts": 0, "candidates": 0}
    for n, (eid, views) in enumerate(sorted(exposures.items())):
        in_night = views[0] in night
        obj_text = SCRIPT if n == 0 else views[0].object_id
        path = raw / f"{eid}.fits"
        hdr = fits.Header({"FIELD": field if in_night else f"ZTF{views[0].record['candidate']['field']}",
                           "MJD-OBS": views[0].mjd, "OBJECT": obj_text, "EXPTIME": 30.0, "TELESCOP": "P48 (ZTF)"})
        fits.PrimaryHDU(np.zeros((8, 8), np.int16), hdr).writeto(path, overwrite=True)
        ev = describe(path, res, file_closed_at=time.time() - 600 + n)
        res.db.register_exposure(ev)
        res.db.mark_published(ev.exposure_id)
        _exposure(res, ev, views, np.random.default_rng(n))
        out["alerts"] += sum(v.score >= 0.5 for v in views)
        out["candidates"] += len(views)
        if in_night:
            out["night_exposures"].append(eid)
        if n == 0:
            out["script_exposure"] = eid
    _upper_limits(res, series)
    res.store.flush()
    return out


def _exposure(res: Resources, ev, views, rng) -> None:
    """One exposure's state and products, as the chain leaves them after ``alert``."""
    db, store, ns = res.db, res.store, ev.namespace or "live"
    lanes = ("qip", "dip") if ev.too else ("dip",)
    t = ev.file_closed_at + 1.0
    for lane in lanes:
        for stage in (FRONT_STAGES if lane == lanes[0] else ()) + BACK_STAGES:
            dt = float(rng.uniform(0.2, 3.0))
            db.record_stage(ev.exposure_id, lane, stage, "1", t, t + dt)
            t += dt
    c0 = views[0].record["candidate"]
    db.update_exposure(ev.exposure_id, status="alerted", flags=[],
                       quality={"fwhm_px": c0.get("fwhm"), "maglim": c0.get("diffmaglim"), "zp": c0.get("magzpsci"),
                                "pcc": 0.99, "cloud_prob": 0.02})
    stamps = {k: np.hstack([_stamp(v, k) for v in views]) for k in ("science", "template", "difference")}
    thumb = stamps["science"][:, :STAMP]
    lo, hi = np.nanpercentile(thumb, [1, 99])
    store.put(store.key(ns, ev.exposure_id, lanes[0], PRODUCT_FILES["thumbnail"]),
              writer("thumbnail", np.clip((np.nan_to_num(thumb, nan=lo) - lo) / (hi - lo), 0, 1)), sync=True)
    header = fits.Header({"BUNIT": "DN"})
    image = lambda data: SimpleNamespace(data=data, header=header)  # noqa: E731
    diff = SimpleNamespace(diff=stamps["difference"], header=header, mask=np.zeros(stamps["difference"].shape, np.int16))
    cands = Table({"x": [STAMP * i + STAMP // 2 for i in range(len(views))], "y": [STAMP // 2] * len(views),
                   "rb": [v.score for v in views], "object_id": [v.object_id for v in views]})
    if any(v.score < 0.5 for v in views):  # stamps of candidates without an alert come from the bundle
        store.put(store.key(ns, ev.exposure_id, "dip", PRODUCT_FILES["bundle"]),
                  lambda p: write_bundle(p, {"EXPID": ev.exposure_id, "LANE": "dip"}, diff, image(stamps["science"]),
                                         image(stamps["template"]), cands), sync=True)
    packets = []
    for i, v in enumerate(views):
        c = v.record["candidate"]
        cid = f"{ev.exposure_id}:dip:{i}"
        host = f"PS1 {c['objectidps1']}" if v.has_host else None
        db.upsert_candidate(dict(
            candidate_id=cid, exposure_id=ev.exposure_id, lane="dip", object_id=v.object_id, mjd=v.mjd, ra=v.ra,
            dec=v.dec, x=STAMP * i + STAMP // 2, y=STAMP // 2, mag=v.mag, mag_err=v.mag_err, snr=1.0857 / v.mag_err,
            sign=1 if v.isdiffpos else -1, score=v.score, model_version="ztf-drb", maglim=v.maglim,
            extra={"host_id": host, "host_sep_arcsec": c.get("distpsnr1") if host else None, "ssnamenr": v.ssnamenr}))
        prev = db.rows("objects", object_id=v.object_id)
        db.upsert_object(dict(object_id=v.object_id, ra=v.ra, dec=v.dec, field_id=ev.field_id,
                              n_det=prev[0]["n_det"] + 1 if prev else 1,
                              first_mjd=prev[0]["first_mjd"] if prev else v.mjd, last_mjd=v.mjd))
        db.add_photometry(dict(object_id=v.object_id, exposure_id=ev.exposure_id, lane="dip", mjd=v.mjd, mag=v.mag,
                               mag_err=v.mag_err, flux=None, flux_err=None, maglim=v.maglim, forced=False, detected=True))
        if v.score < 0.5:
            continue
        aid = str(c["candid"])
        packet = build_alert(
            {"x": STAMP * i + STAMP // 2, "y": STAMP // 2, "ra": v.ra, "dec": v.dec, "mag": v.mag, "mag_err": v.mag_err,
             "snr": 1.0857 / v.mag_err, "sign": 1 if v.isdiffpos else -1, "score": v.score},
            [{"mjd": p["jd"] - 2400000.5, "exposure_id": f"ztf_{p['pid']}", "mag": p.get("magpsf"),
              "mag_err": p.get("sigmapsf"), "maglim": p.get("diffmaglim"), "detected": p.get("magpsf") is not None}
             for p in v.record.get("prv_candidates") or []],
            {"host_id": host, "ssnamenr": v.ssnamenr},
            {k: v.cutouts[k] for k in ("science", "template", "difference")},
            {"alert_id": aid, "object_id": v.object_id, "exposure_id": ev.exposure_id, "lane": "dip",
             "field_id": ev.field_id, "mjd": v.mjd, "model_version": "ztf-drb", "too": ev.too, "filter": v.filter})
        value = encode(packet)
        packets.append(packet)
        db.record_alert(dict(alert_id=aid, candidate_id=cid, object_id=v.object_id, exposure_id=ev.exposure_id,
                             lane="dip", score=v.score, digest=hashlib.sha256(value).hexdigest(),
                             published_at=t, latency_s=t - ev.file_closed_at))
    if packets:
        write_avro_file(packets, store.path(store.key(ns, ev.exposure_id, "dip", PRODUCT_FILES["alerts"])))


def _stamp(v, kind: str) -> np.ndarray:
    """A real 63x63 stamp (edge stamps padded with NaN, centred as ZTF cuts them)."""
    data, _ = read_cutout(v.cutouts[kind])
    out = np.full((STAMP, STAMP), np.nan, np.float32)
    ny, nx = min(STAMP, data.shape[0]), min(STAMP, data.shape[1])
    out[:ny, :nx] = data[:ny, :nx]
    return out


def _upper_limits(res: Resources, series) -> None:
    """The series object's non-detections from its last alert's history, as forced-photometry limits."""
    last = series[-1]
    for p in last.record.get("prv_candidates") or []:
        if p.get("magpsf") is None and p.get("diffmaglim") is not None:
            res.db.add_photometry(dict(object_id=last.object_id, exposure_id=f"ztf_{p['pid']}", lane="dip",
                                       mjd=p["jd"] - 2400000.5, mag=None, mag_err=None, flux=None, flux_err=None,
                                       maglim=p["diffmaglim"], forced=True, detected=False))
