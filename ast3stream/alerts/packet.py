"""Build alert packets (plain dicts that conform to the Avro schema) with deterministic ids."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
from astropy.coordinates import SkyCoord

from ast3stream.alerts.schema import load_schema, versions

PUBLISHER = "ast3stream"
CUTOUT_FIELDS = {"science": "cutoutScience", "template": "cutoutTemplate", "difference": "cutoutDifference"}
JD_MJD = 2400000.5
#: column names used by other stages -> alert field names (ZTF's where the meaning is the same)
ALIASES = {"sign": "isdiffpos", "elongation": "elong", "fluxerr": "flux_err", "magerr": "mag_err",
           "mag": "magpsf", "mag_err": "sigmapsf", "maglim": "diffmaglim", "x": "xpos", "y": "ypos",
           "rb": "drb", "score": "drb", "model_version": "drbversion", "zp": "magzpsci", "filter": "band",
           "ss_sep_arcsec": "ssdistnr", "ss_mag": "ssmagnr",
           "fwhm_px": "fwhm_image", "image_fwhm": "fwhm_image", "gw_prob": "gw_field_prob",
           "stage_versions": "versions"}
#: ZTF's filter ids (``fid``); any other band is 0
ZTF_FID = {"g": 1, "r": 2, "i": 3}
#: fields left out of :func:`packet_digest`: wall-clock times, which differ in a replay
VOLATILE = ("timing",)


def alert_id(exposure_id: str, lane: str, cand: int | tuple[float, float],
             versions: Mapping[str, str] | None = None, namespace: str = "") -> int:
    """Deterministic 63-bit id of a candidate: sha256 of namespace, exposure, lane, the
    candidate's index or its (x, y) rounded to 0.01 px, and every stage version.

    Identical inputs through identical versions give identical ids, so two runs can be diffed.
    """
    where = str(int(cand)) if np.isscalar(cand) else "{:.2f},{:.2f}".format(*(float(c) for c in cand))
    parts = [namespace, str(exposure_id), str(lane), where,
             *(f"{k}={v}" for k, v in sorted((versions or {}).items()))]
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big") >> 1


def object_name(ra: float, dec: float, prefix: str = "AST3") -> str:
    """IAU-style name from the position, e.g. ``AST3J123456.78+123456.7``."""
    hms = SkyCoord(ra, dec, unit="deg").to_string("hmsdms", sep="", precision=2)
    ra_s, dec_s = hms.split()
    return f"{prefix}J{ra_s}{dec_s[:-1]}"


def build_alert(candidate: Mapping, prv_candidates: Sequence[Mapping], crossmatch: Mapping | None,
                cutouts: Mapping[str, bytes], meta: Mapping) -> dict:
    """An alert packet dict (schema 2.x, ZTF field names) for :func:`ast3stream.alerts.encode`.

    ``candidate``: one row of the detection table (``x``, ``y``, ``ra``, ``dec``, ``mag``,
    ``mag_err``, ``flux``, ``flux_err``, ``snr``, ``sign``, ``fwhm``, ``elongation``, ``score``
    ...); ``prv_candidates``: earlier light-curve points (non-detections have no ``mag`` and
    a ``maglim``); ``crossmatch``: ``host_*``, ``ss*``, ``gw_*`` values; ``cutouts``: gzipped
    FITS stamps keyed ``science``/``template``/``difference``; ``meta``: exposure-level values
    (``exposure_id``, ``lane``, ``mjd``, ``model_version``, ``field_id``, ``too``, ``flags``,
    ``versions``, ``object_id``, ``alert_id``, ``gw_event``, ``gw_prob`` ..., ``namespace``,
    ``timing`` = ``{file_closed_at, alert_built_at, latency_s}`` (Unix s; optional), and
    ``metrics`` = image numbers such as ``maglim``, ``fwhm_px``, ``zp``). Row values win over
    ``meta``, ``meta`` over ``metrics``; NaN becomes null; missing optional fields get the
    schema default. Our names are mapped to ZTF's (:data:`ALIASES`; ``mjd``/``first_mjd`` to
    ``jd``/``jdstarthist``, a sign or bool to ``isdiffpos`` 't'/'f', ``band`` to ``fid``).
    Without ``alert_id`` the id is :func:`alert_id` of the (x, y) position.
    """
    version = meta.get("schema_version") or versions()[-1]
    schema = load_schema(version)
    meta = _renamed(meta)
    values = _renamed({**(meta.get("metrics") or {}), **meta, **candidate})
    stage_versions = {str(k): str(v) for k, v in (meta.get("versions") or {}).items()}
    if values.get("alert_id") is not None:
        values["candid"] = int(values["alert_id"])
    elif values.get("candid") is None:
        values["candid"] = alert_id(values["exposure_id"], values["lane"], (values["xpos"], values["ypos"]),
                                    stage_versions, str(meta.get("namespace", "")))
    cand = _conform(_record(schema, "candidate"), values)
    xmatch = {**{k: v for k, v in meta.items() if k.startswith("gw_")}, **(crossmatch or {})}
    object_id = values.get("object_id") or object_name(cand["ra"], cand["dec"])
    alert = {
        "schemavsn": version,
        "publisher": str(meta.get("publisher", PUBLISHER)),
        "objectId": str(object_id),
        "candid": cand["candid"],
        "alertId": cand["candid"],
        "candidate": cand,
        "prv_candidates": [_conform(_record(schema, "prv_candidate"), _renamed({"band": cand["band"], **p}))
                           for p in prv_candidates],
        "crossmatch": _conform(_record(schema, "crossmatch"), xmatch),
        "versions": stage_versions,
    }
    for kind, name in CUTOUT_FIELDS.items():
        stamp = cutouts.get(kind, cutouts.get(name))
        alert[name] = None if stamp is None else {
            "fileName": f"candid{cand['candid']}_{kind}.fits.gz", "stampData": bytes(stamp)}
    alert["timing"] = _conform(_record(schema, "timing"), meta["timing"]) if meta.get("timing") else None
    return alert


def packet_digest(alert: Mapping) -> str:
    """sha256 of the packet's content (Avro of the packet less :data:`VOLATILE` fields, in its
    own schema version): the same alert gives the same digest whatever framing carries it, so
    outputs keyed by it are idempotent across redelivery and replays."""
    import io

    import fastavro

    record = {k: v for k, v in alert.items() if k not in VOLATILE}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, load_schema(alert.get("schemavsn") or versions()[-1]), record)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _renamed(row: Mapping) -> dict:
    """Row values under the alert's (ZTF) field names and units."""
    out = {ALIASES.get(k, k): v for k, v in dict(row).items()}
    for mjd, jd in (("mjd", "jd"), ("first_mjd", "jdstarthist")):
        if _plain(out.get(mjd)) is not None and out.get(jd) is None:
            out[jd] = float(out[mjd]) + JD_MJD
    if _plain(out.get("isdiffpos")) is not None:
        out["isdiffpos"] = "t" if _positive(out["isdiffpos"]) else "f"
    if out.get("band") is None:
        out["band"] = "g"                                   # the schema's default band
    if out.get("fid") is None:
        out["fid"] = ZTF_FID.get(str(out["band"]), 0)
    return out


def _positive(sign) -> bool:
    """Positive difference from a sign (+1/-1), a bool or ZTF's 't'/'f'."""
    return sign in ("t", "1", "true") if isinstance(sign, str) else float(sign) > 0


def _record(schema: dict, name: str) -> dict:
    """The (expanded) record ``name`` inside a parsed schema."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "record" and node.get("name", "").split(".")[-1] == name:
                return node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise KeyError(name)


_CAST = {"float": lambda v: float(np.float32(v)), "double": float, "int": int, "long": int, "boolean": bool, "string": str, "bytes": bytes}


def _conform(record: dict, values: Mapping) -> dict:
    """Values for every field of ``record``: cast to the Avro type (floats rounded to 32 bits, so
    a decoded alert equals the built one), NaN/masked to null, defaults filled."""
    out = {}
    for f in record["fields"]:
        name, ftype = f["name"], f["type"]
        value = _plain(values.get(name))
        nullable = isinstance(ftype, list) and "null" in ftype
        if value is None:
            if "default" in f:
                out[name] = f["default"]
                continue
            raise ValueError(f"alert field {record['name']}.{name} is required")
        branch = next(t for t in ftype if t != "null") if nullable else ftype
        if isinstance(branch, str) and branch in _CAST:
            value = _CAST[branch](value)
        elif branch == "array" or (isinstance(branch, dict) and branch.get("type") == "array"):
            value = [str(v) for v in value]
        elif isinstance(branch, dict) and branch.get("type") == "map":
            value = {str(k): str(v) for k, v in value.items()}
        else:  # enum
            value = str(value)
        out[name] = value
    return out


def _plain(value):
    """numpy scalars to Python; NaN, masked and empty strings to None."""
    if value is np.ma.masked:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str) and value.strip() in ("", "null", "None"):
        return None
    return value
