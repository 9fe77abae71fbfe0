"""The portal's pictures, drawn server-side with matplotlib: candidate stamps (science,
template, difference, SNR) from the alert packet (what subscribers got) or, for a
candidate below the alert threshold, cut from the lane's product bundle; light curves, the
night's latency histogram and the ToO plan."""
from __future__ import annotations

import functools
import io
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.visualization import ZScaleInterval
from matplotlib.figure import Figure
from PIL import Image

STAMP_KINDS = {"science": "SCI", "template": "TMPL", "difference": "DIFF", "snr": "DIFF"}
LANE_COLOURS = {"dip": "C0", "qip": "C1"}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def bundle_stamp(bundle: str, kind: str, x: float, y: float, size: int) -> np.ndarray:
    """A ``size`` x ``size`` cut of a lane bundle's ``kind`` image around 0-based (x, y); NaN off the image."""
    half = size // 2
    xi, yi = int(round(x)), int(round(y))
    with fits.open(bundle, memmap=False) as hdul:
        hdu = hdul[STAMP_KINDS[kind]]
        ny, nx = hdu.shape
        y0, y1, x0, x1 = max(0, yi - half), min(ny, yi + half + 1), max(0, xi - half), min(nx, xi + half + 1)
        cut = np.asarray(hdu.section[y0:y1, x0:x1], dtype=float)
    data = np.full((size, size), np.nan)
    data[y0 - (yi - half):y1 - (yi - half), x0 - (xi - half):x1 - (xi - half)] = cut
    return data


@functools.lru_cache(maxsize=64)
def packets(path: str, mtime: float) -> dict[str, dict]:
    """The alert packets of a lane's ``alerts.avro`` by alert id (``mtime`` keys the cache)."""
    from ast3stream.alerts import read_avro_file

    return {str(p["alertId"]): p for p in read_avro_file(path)}


def packet_stamp(packet: dict, kind: str) -> np.ndarray:
    """The alert's own cutout of ``kind`` (``snr``: its difference stamp)."""
    from ast3stream.alerts import read_cutout

    name = {"science": "cutoutScience", "template": "cutoutTemplate"}.get(kind, "cutoutDifference")
    return np.asarray(read_cutout(packet[name]["stampData"])[0], dtype=float)


def stamp_png(data: np.ndarray, kind: str, arcsec_per_px: float, zoom: int = 3) -> bytes:
    """A stamp as a zscale PNG (north up as stored, pixels ``zoom`` x ``zoom``) with a 5-arcsec
    scale bar (yellow, bottom left) and ticks either side of the centre (red); ``snr`` is the
    difference over its robust sigma, shown from -5 to its peak."""
    finite = data[np.isfinite(data)]
    if kind == "snr" and finite.size:
        sigma = 1.4826 * np.median(np.abs(finite - np.median(finite))) or 1.0
        data, finite = data / sigma, finite / sigma
        vmin, vmax = -6.0, 6.0
    else:
        vmin, vmax = ZScaleInterval().get_limits(finite) if finite.size else (0.0, 1.0)
    grey = np.clip((np.nan_to_num(data, nan=vmin) - vmin) / ((vmax - vmin) or 1.0), 0, 1)[::-1]
    rgb = np.repeat(np.repeat(np.repeat(grey[..., None], 3, axis=2), zoom, axis=0), zoom, axis=1)
    ny, nx = rgb.shape[:2]
    bar = min(nx - 4, int(round(5.0 / arcsec_per_px * zoom)))
    rgb[ny - 4:ny - 2, 2:2 + bar] = (1.0, 0.9, 0.0)
    cy, cx, gap = ny // 2, nx // 2, max(2, nx // 16)
    rgb[cy - 1:cy + 1, max(0, cx - 3 * gap):cx - gap] = (1.0, 0.1, 0.1)
    rgb[cy - 1:cy + 1, cx + gap:cx + 3 * gap] = (1.0, 0.1, 0.1)
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buf, format="png", compress_level=1)
    return buf.getvalue()


def light_curve_png(points: list[dict], title: str) -> bytes:
    """Magnitude against MJD: detections with errors, forced photometry, upper limits; per lane."""
    fig = Figure(figsize=(6.4, 3.6), dpi=90)
    ax = fig.add_subplot()
    for lane, colour in LANE_COLOURS.items():
        pts = [p for p in points if p["lane"] == lane]
        det = [p for p in pts if p["detected"] and p["mag"] is not None]
        lim = [p for p in pts if not p["detected"] and p["maglim"] is not None]
        for forced, marker in ((False, "o"), (True, "s")):
            sel = [p for p in det if bool(p["forced"]) == forced]
            if sel:
                ax.errorbar([p["mjd"] for p in sel], [p["mag"] for p in sel],
                            yerr=[p["mag_err"] or 0 for p in sel], fmt=marker, color=colour,
                            mfc="none" if forced else colour,
                            label=f"{lane.upper()} {'forced' if forced else 'detection'}")
        if lim:
            ax.plot([p["mjd"] for p in lim], [p["maglim"] for p in lim], "v", color=colour, alpha=0.6,
                    label=f"{lane.upper()} upper limit")
    ax.invert_yaxis()
    ax.set_xlabel("MJD")
    ax.set_ylabel("magnitude")
    ax.set_title(title, fontsize=10)
    if points:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def latency_png(latencies: list[float], title: str) -> bytes:
    fig = Figure(figsize=(5, 2.6), dpi=90)
    ax = fig.add_subplot()
    if latencies:
        ax.hist(latencies, bins=min(30, max(5, len(latencies) // 2)), color="C2")
        ax.axvline(float(np.median(latencies)), color="k", ls="--", lw=1,
                   label=f"median {np.median(latencies):.1f} s")
        ax.legend(fontsize=8)
    ax.set_xlabel("file closed → alert published [s]")
    ax.set_ylabel("alerts")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def plan_png(fields: list[dict], title: str, skymap=None) -> bytes:
    """The ToO plan (:func:`ast3stream.gw.plot.plot_plan`): fields on the sky (over the sky map's
    density when given), cumulative probability against rank."""
    from astropy.table import Table

    from ast3stream.gw.plot import plot_plan

    cols = ["rank", "field_id", "prob", "cum_prob"]
    if fields and all(f["ra"] is not None for f in fields):
        cols += ["ra", "dec"]
    table = Table(rows=[[f[c] for c in cols] for f in fields], names=cols)
    with tempfile.TemporaryDirectory() as tmp:
        return Path(plot_plan(table, Path(tmp) / "plan.png", skymap, title=title)).read_bytes()
