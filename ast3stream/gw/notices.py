"""Gravitational-wave notices: LVK's JSON alerts (IGWN GCN Kafka) and GCN VOEvents.

JSON notices carry the multi-order sky map inline (base64 FITS in ``event.skymap``).
VOEvents only name it (``Skymap_URL`` / ``skymap_fits`` parameter): the file is looked up
by its base name in a local directory and never downloaded. Alert types are upper-cased
(``PRELIMINARY``, ``INITIAL``, ``UPDATE``, ``RETRACTION``, ``EARLYWARNING``).

Anything else (not UTF-8, neither JSON nor XML, a missing or mistyped field, an unknown
alert type, bad base64, a sky map that is not a normalised HEALPix map) raises
:class:`BadNotice` with the reason.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from astropy.table import Table
from astropy.time import Time

from ast3stream.events import MalformedMessage
from ast3stream.gw.skymap import BadSkymap, read_skymap

ALERT_TYPES = ("EARLYWARNING", "PRELIMINARY", "INITIAL", "UPDATE", "RETRACTION")


class BadNotice(MalformedMessage):
    """A GW notice that cannot be used; the message says why."""


@dataclass
class GWNotice:
    superevent_id: str
    alert_type: str
    time_created: Time | None = None
    event_time: Time | None = None
    far: float | None = None                  #: false-alarm rate [Hz]
    significant: bool | None = None
    classification: dict[str, float] = field(default_factory=dict)
    properties: dict[str, float] = field(default_factory=dict)
    instruments: list[str] = field(default_factory=list)
    group: str | None = None
    pipeline: str | None = None
    search: str | None = None
    skymap: Table | None = field(default=None, repr=False)
    skymap_url: str | None = None
    skymap_path: Path | None = None

    @property
    def is_retraction(self) -> bool:
        return self.alert_type == "RETRACTION"


def read_notice(source: str | Path | bytes, skymap_dir: str | Path | None = None) -> GWNotice:
    """Parse a JSON or VOEvent GW notice from a path or bytes.

    ``skymap_dir``: where a VOEvent's sky-map file is looked up by name (default: the
    notice's own folder). A sky map that is not found leaves ``skymap`` None.
    """
    path = None
    if isinstance(source, (str, Path)) and not str(source).lstrip().startswith(("{", "<")):
        path = Path(source)
        source = path.read_bytes()
    try:
        text = source.decode() if isinstance(source, bytes) else str(source)
    except UnicodeDecodeError as exc:
        raise BadNotice(f"not UTF-8 text ({exc})") from None
    if skymap_dir is None and path is not None:
        skymap_dir = path.parent
    start = text.lstrip()[:1]
    if start == "{":
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise BadNotice(f"invalid JSON ({str(exc)[:200]})") from None
        return _from_json(d)
    if start == "<":
        return _from_voevent(text, Path(skymap_dir) if skymap_dir else None)
    raise BadNotice(f"neither a JSON notice nor a VOEvent: starts with {text[:20]!r}")


def _get(d: dict, key: str, types: type | tuple, where: str = "", required: bool = False):
    """``d[key]`` if it has one of ``types`` (None when absent and not required), else :class:`BadNotice`."""
    value = d.get(key)
    if value is None and not required:
        return None
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        found = "missing" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
        raise BadNotice(f"{where}{key} is {found}, expected {' or '.join(t.__name__ for t in types)}")
    return value


def _time(value, what: str) -> Time | None:
    if value is None:
        return None
    try:
        return Time(value)
    except (ValueError, TypeError) as exc:
        raise BadNotice(f"{what} = {str(value)[:80]!r} is not a time") from exc


def _numbers(d, what: str) -> dict[str, float]:
    if not isinstance(d, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                          for v in d.values()):
        raise BadNotice(f"{what} is not a mapping of names to finite numbers")
    return {str(k): float(v) for k, v in d.items()}


def _skymap(data: bytes):
    try:
        return read_skymap(data)
    except BadSkymap as exc:
        raise BadNotice(f"bad sky map: {exc}") from exc


def _alert_type(value: str, superevent_id: str) -> str:
    alert_type = str(value).upper()
    if alert_type not in ALERT_TYPES:
        raise BadNotice(f"{superevent_id}: alert type {str(value)[:40]!r} is not one of {ALERT_TYPES}")
    return alert_type


def _from_json(d) -> GWNotice:
    if not isinstance(d, dict):
        raise BadNotice(f"JSON notice is a {type(d).__name__}, not an object")
    superevent_id = _get(d, "superevent_id", str, required=True)
    if not superevent_id.strip():
        raise BadNotice("empty superevent_id")
    ev = _get(d, "event", dict) or {}
    far = _get(ev, "far", (int, float), "event.")
    if far is not None and not (math.isfinite(far) and far >= 0):
        raise BadNotice(f"event.far = {far} is not a false-alarm rate")
    instruments = _get(ev, "instruments", list, "event.") or []
    if not all(isinstance(i, str) for i in instruments):
        raise BadNotice("event.instruments is not a list of names")
    notice = GWNotice(
        superevent_id=superevent_id, alert_type=_alert_type(_get(d, "alert_type", str, required=True), superevent_id),
        time_created=_time(d.get("time_created"), "time_created"), event_time=_time(ev.get("time"), "event.time"),
        far=far, significant=_get(ev, "significant", bool, "event."),
        classification=_numbers(ev.get("classification") or {}, "event.classification"),
        properties=_numbers(ev.get("properties") or {}, "event.properties"), instruments=instruments,
        group=_get(ev, "group", str, "event."), pipeline=_get(ev, "pipeline", str, "event."),
        search=_get(ev, "search", str, "event."))
    skymap = _get(ev, "skymap", str, "event.")
    if skymap:
        try:
            data = base64.b64decode(skymap, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadNotice(f"event.skymap is not base64 ({exc})") from None
        notice.skymap = _skymap(data)
    return notice


def _from_voevent(text: str, skymap_dir: Path | None) -> GWNotice:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BadNotice(f"invalid XML ({exc})") from None
    params = {p.get("name"): p.get("value") for p in root.iter() if _tag(p) == "Param"}
    groups = {g.get("type"): {p.get("name"): p.get("value") for p in g if _tag(p) == "Param"}
              for g in root.iter() if _tag(g) == "Group"}
    isotime = next((e.text for e in root.iter() if _tag(e) == "ISOTime"), None)
    date = next((e.text for e in root.iter() if _tag(e) == "Date"), None)
    ivorn = root.get("ivorn", "")
    if "GraceID" not in params and not ivorn.startswith("ivo://gwnet/"):
        raise BadNotice(f"not an LVK gravitational-wave notice (ivorn {ivorn[:100]!r})")
    url = params.get("skymap_fits") or params.get("Skymap_URL")
    superevent_id = params.get("GraceID") or ivorn.split("#")[-1].split("-")[0]
    if not superevent_id:
        raise BadNotice("VOEvent without a GraceID")
    try:
        far = float(params["FAR"]) if params.get("FAR") else None
    except ValueError:
        raise BadNotice(f"FAR = {params['FAR'][:40]!r} is not a number") from None
    notice = GWNotice(
        superevent_id=superevent_id, alert_type=_alert_type(params.get("AlertType", ""), superevent_id),
        time_created=_time(date, "Date"), event_time=_time(isotime, "ISOTime"), far=far,
        significant=params.get("Significant") == "1" if "Significant" in params else None,
        classification=_numbers(_floats(groups.get("Classification", {}), "Classification"), "Classification"),
        properties=_numbers(_floats(groups.get("Properties", {}), "Properties"), "Properties"),
        instruments=[s for s in (params.get("Instruments") or "").split(",") if s],
        group=params.get("Group"), pipeline=params.get("Pipeline"), search=params.get("Search"),
        skymap_url=url)
    if url and skymap_dir is not None:
        local = skymap_dir / Path(url).name
        if local.exists():
            notice.skymap_path, notice.skymap = local, _skymap(local)
    return notice


def _floats(params: dict, what: str) -> dict:
    try:
        return {k: float(v) for k, v in params.items()}
    except (TypeError, ValueError):
        raise BadNotice(f"{what} holds a value that is not a number") from None


def _tag(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]
