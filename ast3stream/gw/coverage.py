"""Coverage of a GW event during the night: the probability covered by processed exposures, by depth.

An exposure covers its field's footprint (the TAN rectangle at the field centre, as
:mod:`ast3stream.gw.fields`) to the limiting magnitude it reached (``maglim``). The report
gives the probability of the union of all footprints, the probability covered at least as
deep as each half-magnitude step, the cumulative probability against time, and the
candidates inside the credible region ranked for kilonova likeness
(:mod:`ast3stream.gw.kilonova`).
"""
from __future__ import annotations

import numpy as np
from astropy.table import Table

from ast3stream.gw.fields import covered_probability, depth_coverage
from ast3stream.gw.kilonova import rank_candidates
from ast3stream.gw.skymap import credible_area


def coverage_report(skymap: Table, exposures: Table, width_deg: float, height_deg: float, gw,
                    candidates: Table | None = None, event_id: str = "") -> dict:
    """``exposures``: ``exposure_id``, ``field_id``, ``ra``, ``dec``, ``mjd``, ``maglim`` (NaN: not
    calibrated); ``candidates``: see :func:`~ast3stream.gw.kilonova.assess` (``object_id`` etc. kept)."""
    exposures = exposures[np.argsort(np.asarray(exposures["mjd"], float))] if len(exposures) else exposures
    maglim = np.asarray(exposures["maglim"], float) if len(exposures) else np.zeros(0)
    finite = maglim[np.isfinite(maglim)]
    depths = np.arange(np.floor(finite.min() * 2) / 2, finite.max() + 1e-9, 0.5) if finite.size else np.zeros(0)
    by_depth = depth_coverage(skymap, exposures, width_deg, height_deg, depths) if depths.size else np.zeros(0)
    cum = covered_probability(skymap, exposures, width_deg, height_deg)
    report = dict(
        event_id=event_id, n_exposures=len(exposures),
        n_fields=len(set(str(f) for f in exposures["field_id"])) if len(exposures) else 0,
        prob_covered=float(cum[-1]) if cum.size else 0.0,
        credible_level=gw.credible_level, area_deg2=credible_area(skymap, gw.credible_level),
        by_depth=[dict(maglim=float(d), prob=float(p)) for d, p in zip(depths, by_depth)],
        timeline=[dict(mjd=float(t), exposure_id=str(e), field_id=str(f), maglim=None if not np.isfinite(m) else float(m),
                       cum_prob=float(c))
                  for t, e, f, m, c in zip(exposures["mjd"], exposures["exposure_id"], exposures["field_id"], maglim, cum)]
        if len(exposures) else [],
        candidates=[])
    if candidates is not None and len(candidates):
        ranked = rank_candidates(candidates, skymap, gw)
        inside = ranked[np.asarray(ranked["credible_level"]) <= gw.credible_level]
        report["candidates"] = [{k: _plain(r[k]) for k in inside.colnames} for r in inside]
    return report


def summary(report: dict) -> str:
    """The report as terminal text."""
    lines = [f"{report['event_id']}: {report['n_exposures']} exposures of {report['n_fields']} fields cover "
             f"{report['prob_covered']:.3f} of the probability ({report['credible_level']:.0%} area {report['area_deg2']:.0f} deg2)"]
    for d in report["by_depth"]:
        lines.append(f"  to g >= {d['maglim']:.1f}: {d['prob']:.3f}")
    lines.append(f"  {len(report['candidates'])} candidates inside the {report['credible_level']:.0%} region")
    for c in report["candidates"][:20]:
        lines.append(f"  #{c['kn_rank']} {c.get('object_id', '')} ra {c['ra']:.5f} dec {c['dec']:.5f} "
                     f"score {c['kn_score']:.3f}: {c['kn_reasons']}")
    return "\n".join(lines)


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
