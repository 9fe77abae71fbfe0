"""GCN-style notices for optical counterpart candidates of gravitational-wave events.

The notice follows GCN's optical alert notice (``gcn/notices/boom``: Alert, Reporter,
Localization, Event, FollowUp, Photometry, DateTime core schemas) and is validated against
our own, stricter JSON schema ``ast3stream/schemas/gcn/ast3stream.optical_counterpart.schema.json``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import jsonschema
from astropy.time import Time

from ast3stream.alerts.filters import AlertFilter
from ast3stream.events import SCHEMA_DIR
from ast3stream.gw.kilonova import assess, light_curve_rate
from ast3stream.gw.skymap import probdensity_at

SCHEMA_PATH = SCHEMA_DIR / "gcn" / "ast3stream.optical_counterpart.schema.json"
TELESCOPE = "AST3-3"
INSTRUMENT = "AST3-3 CMOS camera"


@lru_cache(maxsize=1)
def notice_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def notice_filter(min_score: float) -> AlertFilter:
    """Alerts that deserve a notice: in a GW ToO field, score >= ``min_score``, not an asteroid."""
    return AlertFilter(min_score=min_score, in_gw_field=True, not_asteroid=True)


def build_notice(alert: Mapping, gw_event, *, created: Time | None = None,
                 position_error_arcsec: float = 0.5, gw=None) -> dict:
    """A notice for our ``alert`` crossmatched with ``gw_event``: a GWNotice, a mapping with
    ``superevent_id`` or ``event_id`` (a stored ToO row), or the superevent id. ``created``
    defaults to now; observation start = mid-exposure MJD - exptime / 2.

    With the ``gw`` section and an event that has a sky map (a GWNotice's ``skymap``, a ToO
    row's ``skymap_path``) the notice carries the kilonova assessment
    (:func:`ast3stream.gw.kilonova.assess`): ``classification_scores.kilonova``, the credible
    level and density at the position, and in the GW crossmatch's ``reference``
    ``kilonova_score`` and ``kilonova_reasons``."""
    c, x = alert["candidate"], alert.get("crossmatch") or {}
    if c.get("drb") is None:
        raise ValueError("a GCN notice needs a real/bogus score")
    if isinstance(gw_event, str):
        sid, gw_type = gw_event, None
    elif isinstance(gw_event, Mapping):       # a GWNotice as dict, or a ToO row of the database
        sid, gw_type = gw_event.get("superevent_id") or gw_event["event_id"], gw_event.get("alert_type")
    else:
        sid, gw_type = gw_event.superevent_id, gw_event.alert_type
    followup = {"ref_type": "GW", "ref_instrument": "LVK", "ref_ID": sid}
    if gw_type:
        followup["reference"] = {"gcn.notices.LVK.alert": f"{sid}-{str(gw_type).lower()}"}
    name = alert["objectId"]
    target = {"event_name": name, "id": str(alert["alertId"]), "ra": c["ra"], "dec": c["dec"],
              "ra_dec_error": position_error_arcsec / 3600, "classification_scores": {"real": c["drb"]},
              "gcn_crossmatch": [followup]}
    target.update({k: x[k] for k in ("gw_probdensity", "gw_credible_level", "gw_field_prob") if x.get(k) is not None})
    if x.get("host_id") is not None:
        target["host_galaxy"] = {"id": str(x["host_id"]), **{
            k: x[src] for k, src in (("separation_arcsec", "host_sep_arcsec"), ("distance_mpc", "host_dist_mpc"))
            if x.get(src) is not None}}
    points = [*(alert.get("prv_candidates") or []), c]
    skymap = _event_skymap(gw_event) if gw is not None else None
    if skymap is not None:
        curve = [dict(mjd=p["jd"] - 2400000.5, mag=p.get("magpsf")) for p in points]
        kn = assess(dict(ra=c["ra"], dec=c["dec"], rb=c["drb"], ssnamenr=c.get("ssnamenr") or None,
                         var_name=x.get("var_name") or None, tns_name=x.get("tns_name") or None,
                         host_id=x.get("host_id"), host_dist_mpc=x.get("host_dist_mpc"),
                         rate_mag_per_day=light_curve_rate(curve)), skymap, gw)
        target["classification_scores"]["kilonova"] = kn["score"]
        target["gw_credible_level"] = min(1.0, kn["credible_level"])
        target["gw_probdensity"] = float(probdensity_at(skymap, c["ra"], c["dec"])[0])
        followup.setdefault("reference", {}).update(kilonova_score=round(kn["score"], 4),
                                                    kilonova_reasons=kn["reasons"])
    half = (c.get("exptime") or 0.0) / 2 / 86400
    photometry = [p for p in (_photometry(name, point, half) for point in sorted(points, key=lambda p: p["jd"])) if p]
    return {
        "$schema": notice_schema()["$id"],
        "alert_datetime": _iso(created or Time.now()),
        "alert_tense": "current",
        "alert_type": "initial" if c.get("ndethist", 1) <= 1 else "subsequent",
        "mission": TELESCOPE, "instrument": INSTRUMENT, "messenger": "EM",
        "record_number": c.get("ndethist", 1),
        "data": {"targets": [target], "photometry": photometry},
    }


@lru_cache(maxsize=4)
def _stored_skymap(path: str):
    from ast3stream.gw.skymap import read_skymap

    return read_skymap(path)


def _event_skymap(gw_event):
    """The event's sky map: a GWNotice's own, or the stored file of a ToO row (None if neither)."""
    if isinstance(gw_event, Mapping):
        path = gw_event.get("skymap_path")
        return _stored_skymap(str(path)) if path and Path(path).exists() else None
    return getattr(gw_event, "skymap", None)


def validate_notice(notice: Mapping) -> None:
    """Raise :class:`jsonschema.ValidationError` unless ``notice`` matches our schema."""
    jsonschema.Draft202012Validator(notice_schema()).validate(notice)


def _photometry(name: str, point: Mapping, half_exposure_d: float) -> dict | None:
    """A GCN photometry entry: a detection (mag, mag_error) or an upper limit (limiting_mag only)."""
    start = Time(point["jd"] - half_exposure_d, format="jd", scale="utc")
    entry = {"event_name": name, "observation_start": _iso(start),
             "telescope": TELESCOPE, "instrument": INSTRUMENT, "filter": point.get("band") or "g",
             "mag_system": "AB"}
    if point.get("magpsf") is not None:
        entry["mag"] = point["magpsf"]
        if point.get("sigmapsf") is not None:
            entry["mag_error"] = point["sigmapsf"]
    if point.get("diffmaglim") is not None:
        entry.update(limiting_mag=point["diffmaglim"], limiting_mag_sigma=5)
    return entry if "mag" in entry or "limiting_mag" in entry else None


def _iso(t: Time) -> str:
    return t.utc.isot + "Z"
