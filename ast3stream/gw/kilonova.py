"""Kilonova-oriented ranking of candidates in the fields of a GW event.

Each candidate gets a score in [0, 1] and the reasons for it:

* vetoes (score 0): outside the ``credible_level`` region of the map, real/bogus below
  ``kn_rb_min``, a known asteroid (``ssnamenr``), a known variable star (``var_name``), a host
  galaxy whose distance is more than ``kn_distance_sigma`` from the map's DISTMU at the position
  (in units of DISTSIGMA);
* otherwise score = rb x localisation (1 - credible level) x distance x evolution (x 0.5 for a
  transient already in TNS, ``tns_name``: older than the merger unless shown otherwise), where the
  distance factor is exp(-z^2 / 2) with z = (d_host - DISTMU) / DISTSIGMA (0.5 with no host
  distance or no distance layer), and the evolution factor is 1 for a rise or fade at least
  ``kn_min_rate`` mag/day (kilonovae fade by ~0.5-1 mag/day in g), 0.3 for slower evolution
  (supernova-like), 0.5 without a light curve of two epochs.

DISTMU/DISTSIGMA are the location and scale of the map's per-pixel distance ansatz
(Singer et al. 2016), close to the conditional mean and standard deviation.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from astropy.table import Table

from ast3stream.gw.skymap import DISTANCE_COLUMNS, credible_level_at, rows_at


def light_curve_rate(points: Iterable[Mapping]) -> float | None:
    """Least-squares slope [mag/day, positive = fading] of the detections (``mjd``, ``mag``); None with < 2 epochs."""
    pts = [(float(p["mjd"]), float(p["mag"])) for p in points if p.get("mag") is not None and np.isfinite(p["mag"])]
    if len({t for t, _ in pts}) < 2:
        return None
    t, m = np.array(pts).T
    return float(np.polyfit(t - t.mean(), m, 1)[0])


def assess(cand: Mapping, skymap: Table, gw, credible_level: float | None = None) -> dict:
    """Score and reasons for one candidate: ``ra``, ``dec``, ``rb``; optional ``ssnamenr``,
    ``var_name``, ``tns_name``, ``host_id``, ``host_dist_mpc``, ``rate_mag_per_day``."""
    level_max = gw.credible_level if credible_level is None else credible_level
    ra, dec = float(cand["ra"]), float(cand["dec"])
    level = float(credible_level_at(skymap, ra, dec)[0])
    reasons, veto = [], False
    if level <= level_max:
        reasons.append(f"inside the {level_max:.0%} region (credible level {level:.2f})")
    else:
        reasons.append(f"outside the {level_max:.0%} region (credible level {level:.2f})")
        veto = True
    rb = cand.get("rb")
    if rb is None or not np.isfinite(rb) or rb < gw.kn_rb_min:
        reasons.append(f"real/bogus {rb if rb is None else round(float(rb), 3)} below {gw.kn_rb_min}")
        veto = True
    if cand.get("ssnamenr"):
        reasons.append(f"known asteroid {cand['ssnamenr']}")
        veto = True
    if cand.get("var_name"):
        reasons.append(f"known variable star {cand['var_name']}")
        veto = True
    known = 0.5 if cand.get("tns_name") else 1.0
    if cand.get("tns_name"):
        reasons.append(f"already in TNS as {cand['tns_name']}")
    dist_factor = 0.5
    host_d = cand.get("host_dist_mpc")
    if all(c in skymap.colnames for c in DISTANCE_COLUMNS) and host_d is not None and np.isfinite(host_d):
        row = rows_at(skymap, ra, dec)[0]
        mu, sigma = (float(skymap[c][row]) for c in ("DISTMU", "DISTSIGMA")) if row >= 0 else (np.nan, np.nan)
        if np.isfinite(mu) and np.isfinite(sigma) and sigma > 0:
            z = (float(host_d) - mu) / sigma
            ok = abs(z) <= gw.kn_distance_sigma
            reasons.append(f"host {cand.get('host_id', '')} at {host_d:.0f} Mpc, {abs(z):.1f} sigma from "
                           f"the map's {mu:.0f} +/- {sigma:.0f} Mpc" + ("" if ok else " (inconsistent)"))
            veto |= not ok
            dist_factor = float(np.exp(-z * z / 2))
    elif host_d is None or not np.isfinite(host_d if host_d is not None else np.nan):
        reasons.append("no host distance")
    rate = cand.get("rate_mag_per_day")
    if rate is None or not np.isfinite(rate):
        evo = 0.5
        reasons.append("no light-curve rate yet")
    elif abs(rate) >= gw.kn_min_rate:
        evo = 1.0
        reasons.append(f"{'fading' if rate > 0 else 'rising'} {abs(rate):.2f} mag/day (kilonova-like)")
    else:
        evo = 0.3
        reasons.append(f"slow evolution {rate:+.2f} mag/day")
    score = 0.0 if veto else float(rb) * (1 - level) * dist_factor * evo * known
    return dict(score=score, veto=veto, credible_level=level, reasons="; ".join(reasons))


def rank_candidates(cands: Table, skymap: Table, gw, credible_level: float | None = None) -> Table:
    """``cands`` with ``kn_score``, ``kn_veto``, ``credible_level``, ``kn_reasons`` and ``kn_rank``
    (1 = most kilonova-like), sorted by rank."""
    rows = [assess({k: _value(r[k]) for k in cands.colnames}, skymap, gw, credible_level) for r in cands]
    out = Table(cands, copy=True)
    out["kn_score"] = [r["score"] for r in rows]
    out["kn_veto"] = [r["veto"] for r in rows]
    out["credible_level"] = [r["credible_level"] for r in rows]
    out["kn_reasons"] = [r["reasons"] for r in rows]
    out = out[np.lexsort((out["credible_level"], -np.asarray(out["kn_score"])))] if len(out) else out
    out["kn_rank"] = np.arange(1, len(out) + 1)
    return out


def _value(v):
    if np.ma.is_masked(v):
        return None
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, str) and v == "" else v
