"""``ast3stream demo``: simulate a night, play it into the watched folder, run the stack, summarise.

The summary compares what came out of the alert topic with the simulator's truth:
an injected transient counts as recovered when an alert of its exposure lies within
``match_radius_arcsec`` of it.

Every demo starts from nothing in a data folder of its own (``runs/demo`` unless ``--data-dir``
says otherwise; never the folder ``ast3stream run`` uses by default): the previous demo's database,
products and files are removed first (:func:`reset_folder`), since the same night simulated again
has the same exposure ids and files, which a kept database would count as done and the watcher
as already seen.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer
from astropy.table import Table

from ast3stream.config import Settings
from agents.db import Database
from ast3stream.rawfile import detector_from_header

from .runner import Stack, wait_for
from .topics import topic


#: the file that marks a data folder as the demo's own, which the next demo may empty
DEMO_MARK = ".ast3stream-demo"
DEFAULT_FOLDER = Path("runs/demo")


def reset_folder(cfg: Settings) -> None:
    """Empty the demo's data folder of a previous demo's state (module docstring) and mark it.
    Refuses a folder that holds files but no :data:`DEMO_MARK` (another run's data), and a
    configured ``database.url`` (the demo's state is the SQLite file of its folder)."""
    data = Path(cfg.paths.data_dir)
    if cfg.database.url:
        raise ValueError("demo: database.url is set; the demo keeps its state in its own folder's SQLite file "
                         "(run it without that configuration)")
    if data.exists() and any(data.iterdir()) and not (data / DEMO_MARK).exists():
        raise ValueError(f"demo: {data} holds files that are not a previous demo's; give the demo a folder of "
                         "its own (--data-dir)")
    if data.exists():
        for entry in data.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    data.mkdir(parents=True, exist_ok=True)
    (data / DEMO_MARK).write_text("made by ast3stream demo: the next demo empties this folder\n")


def play(paths: list[Path], folder: Path, interval: float = 0.0) -> None:
    """Drop raw files into the watched folder as a camera would (write, then close)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        if i and interval:
            time.sleep(interval)
        tmp = folder / f".{path.name}.part"
        shutil.copyfile(path, tmp)
        tmp.replace(folder / path.name)


async def read_topic(bootstrap: str, name: str, timeout: float = 5.0) -> list:
    """Every message of a topic from the beginning (stops after ``timeout`` s of silence)."""
    consumer = AIOKafkaConsumer(name, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, fetch_max_bytes=64 << 20,
                                max_partition_fetch_bytes=64 << 20)
    await consumer.start()
    out = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(timeout * 1000))
            if not batch:
                break
            for msgs in batch.values():
                out.extend(msgs)
    finally:
        await consumer.stop()
    return out


def summarize(cfg: Settings, sim_dir: Path, alerts: list[dict], dead: int, match_radius_arcsec: float = 1.5,
              bright_margin: float = 1.0) -> dict:
    """Compare alerts with the simulator's truth (see module docstring)."""
    from astropy.coordinates import SkyCoord

    db = Database.from_settings(cfg)
    exposures = Table.read(sim_dir / "truth" / "exposures.ecsv")
    status = {r["exposure_id"]: r for r in db.rows("exposures")}
    injected = recovered = injected_all = recovered_all = masked_bright = 0
    per_exposure = []
    for row in exposures:
        eid = str(row["expid"])
        exp = status.get(eid)
        if exp is None or exp["status"] in ("template", "no_template", "failed"):
            continue
        truth = Table.read(sim_dir / "truth" / f"{eid}.fits")
        tr = truth[truth["kind"] == "transient"]
        mine = [a for a in alerts if a["exposure_id"] == eid and a["isdiffpos"]]
        maglim = exp["quality"].get("maglim") or float(row["maglim_true"])
        found = np.zeros(len(tr), bool)
        if len(tr) and mine:
            t = SkyCoord(tr["ra"], tr["dec"], unit="deg")
            a = SkyCoord([m["ra"] for m in mine], [m["dec"] for m in mine], unit="deg")
            _, sep, _ = t.match_to_catalog_sky(a)
            found = sep.arcsec < match_radius_arcsec
        masked = _masked_in_difference(cfg, db, eid, tr)
        bright = (np.asarray(tr["mag"]) < maglim - bright_margin) & ~masked
        masked_bright += int(((np.asarray(tr["mag"]) < maglim - bright_margin) & masked).sum())
        injected += int(bright.sum())
        recovered += int((found & bright).sum())
        injected_all += len(tr)
        recovered_all += int(found.sum())
        per_exposure.append(dict(exposure_id=eid, maglim=maglim, transients=len(tr),
                                 bright=int(bright.sum()), recovered_bright=int((found & bright).sum()),
                                 alerts=len([a for a in alerts if a["exposure_id"] == eid])))
    latencies = [r["latency_s"] for r in db.rows("alerts") if r["latency_s"] is not None]
    done = [e for e in status.values() if e["status"] in ("alerted", "template", "no_template")]
    return {
        "exposures_processed": len(done),
        "exposures_seen": len(status),
        "alerts": len(alerts),
        "injected_transients": injected,
        "recovered_transients": recovered,
        "recovered_fraction": recovered / injected if injected else None,
        "masked_transients": masked_bright,
        "injected_transients_all_mags": injected_all,
        "recovered_transients_all_mags": recovered_all,
        "bright_margin_mag": bright_margin,
        "dead_letters": dead,
        "latency_s": {"p50": float(np.percentile(latencies, 50)) if latencies else None,
                      "p95": float(np.percentile(latencies, 95)) if latencies else None,
                      "n": len(latencies)},
        "first_alert_latency_s": first_alert_latencies(db.rows("alerts")),
        "per_exposure": per_exposure,
    }


def first_alert_latency(alerts: list[dict]) -> dict[tuple[str, str], float]:
    """Seconds from file closed to the first published alert, per (exposure, lane), from the
    database's ``alerts`` rows."""
    first: dict[tuple[str, str], float] = {}
    for a in alerts:
        if a["latency_s"] is not None:
            key = (a["exposure_id"], a["lane"])
            first[key] = min(first.get(key, np.inf), a["latency_s"])
    return first


def first_alert_latencies(alerts: list[dict]) -> dict:
    """Per lane, :func:`first_alert_latency`'s p50, p95 and the night's first exposure's (the one
    a freshly started worker took first)."""
    first = first_alert_latency(alerts)
    closed = {a["exposure_id"]: a["published_at"] - a["latency_s"] for a in alerts if a["latency_s"] is not None}
    out = {}
    for lane in sorted({ln for _, ln in first}):
        lat = {e: v for (e, ln), v in first.items() if ln == lane}
        values = list(lat.values())
        out[lane] = {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
                     "first_exposure": lat[min(lat, key=closed.__getitem__)], "exposures": len(lat)}
    return out


def _masked_in_difference(cfg: Settings, db: Database, exposure_id: str, truth: Table) -> np.ndarray:
    """True where a truth position falls on a pixel masked in the DIP difference image.

    A transient under a satellite trail, a saturated star or a bad column of the science or
    template frame has no measurable flux there; the summary counts it apart.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    path = cfg.products_dir / (db.namespace or "live") / exposure_id / "dip" / "bundle.fits"
    if not len(truth) or not path.exists():
        return np.zeros(len(truth), bool)
    with fits.open(path) as hdul:
        mask, wcs = hdul["MASK"].data, WCS(hdul["DIFF"].header)
    x, y = wcs.all_world2pix(np.asarray(truth["ra"]), np.asarray(truth["dec"]), 0)
    xi, yi = np.round(x).astype(int), np.round(y).astype(int)
    inside = (xi >= 0) & (yi >= 0) & (xi < mask.shape[1]) & (yi < mask.shape[0])
    out = ~inside
    out[inside] = mask[yi[inside], xi[inside]] != 0
    return out


def run_demo(cfg: Settings, exposures: int = 6, scale: float = 0.1, seed: int = 1, n_fields: int = 2,
             interval: float = 2.0, timeout: float = 3600.0, summary: Path | None = None,
             cloud_fraction: float = 0.0, too_fields: tuple[str, ...] = ()) -> dict:
    """Simulate a night, play it into the watched folder through the stack and summarise it (module
    docstring); the data folder is expected empty (:func:`reset_folder`)."""
    from ast3stream.alerts import decode
    from ast3stream.simulate import simulate_night

    data = cfg.paths.data_dir
    sim_dir = data / "sim"
    print(f"simulating {exposures} exposures at scale {scale} into {sim_dir} ...", flush=True)
    night = simulate_night(sim_dir, n_exposures=exposures, scale=scale, seed=seed, cfg=cfg, n_fields=n_fields,
                           cloud_fraction=cloud_fraction, too_fields=too_fields)
    cfg.paths.refcat = sim_dir / "refcat.fits"
    cfg.paths.galaxies = sim_dir / "galaxies.csv"
    cfg.paths.mpcorb = sim_dir / "MPCORB.DAT"
    cfg.paths.fields = sim_dir / "fields.csv"
    cfg.paths.calib_dir = data / "calib"
    cfg.detector = detector_from_header(night.exposures[0].path, cfg.detector)
    for f in (sim_dir / "calib").glob("*.fits"):
        (data / "calib").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, data / "calib" / f.name)
    with Stack(cfg) as stack:
        print(f"broker {cfg.kafka.bootstrap}; watching {cfg.watch_dir}", flush=True)
        raws = [Path(e.path) for e in night.exposures]
        play(raws, cfg.watch_dir, interval)
        db = Database.from_settings(cfg)
        ids = [e.expid for e in night.exposures]
        left = wait_for(db, ids, timeout, stack)
        if left:
            print(f"timed out waiting for {left}", flush=True)
        messages = asyncio.run(read_topic(cfg.kafka.bootstrap, topic(cfg.kafka.prefix, "alerts")))
        dead = asyncio.run(read_topic(cfg.kafka.bootstrap, topic(cfg.kafka.prefix, "deadletter"), timeout=2.0))
    alerts = [alert_view(decode(m.value)) for m in messages]
    result = summarize(cfg, sim_dir, alerts, len(dead))
    result["unfinished"] = left
    if summary:
        Path(summary).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_exposure"}, indent=1))
    return result


def alert_view(packet: dict) -> dict:
    """What the summary needs of an alert packet."""
    c = packet["candidate"]
    return {"exposure_id": c["exposure_id"], "ra": c["ra"], "dec": c["dec"], "isdiffpos": c["isdiffpos"] == "t",
            "alert_id": str(packet["alertId"]), "lane": c["lane"]}
