"""Gravitational-wave notices: LVK's JSON alerts (IGWN GCN Kafka) and GCN VOEvents.

JSON notices carry the multi-order sky map inline (base64 FITS in ``event.skymap``).
VOEvents only name it (``Skymap_URL`` / ``skymap_fits`` parameter): the file is looked up
by its base name in a local directory and never downloaded. Alert types are upper-cased
(``PRELIMINARY``, ``INITIAL``, ``UPDATE``, ``RETRACTION``, ``EARLYWARNING``).
"""
from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from astropy.table import Table
from astropy.time import Time

from ast3stream.gw.skymap import read_skymap


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
    text = source.decode() if isinstance(source, bytes) else str(source)
    if skymap_dir is None and path is not None:
        skymap_dir = path.parent
    if text.lstrip().startswith("{"):
        return _from_json(json.loads(text))
    return _from_voevent(text, Path(skymap_dir) if skymap_dir else None)


def _from_json(d: dict) -> GWNotice:
    ev = d.get("event") or {}
    notice = GWNotice(
        superevent_id=d["superevent_id"], alert_type=str(d["alert_type"]).upper(),
        time_created=Time(d["time_created"]) if d.get("time_created") else None,
        event_time=Time(ev["time"]) if ev.get("time") else None, far=ev.get("far"),
        significant=ev.get("significant"), classification=dict(ev.get("classification") or {}),
        properties=dict(ev.get("properties") or {}), instruments=list(ev.get("instruments") or []),
        group=ev.get("group"), pipeline=ev.get("pipeline"), search=ev.get("search"))
    if ev.get("skymap"):
        notice.skymap = read_skymap(base64.b64decode(ev["skymap"]))
    return notice


def _from_voevent(text: str, skymap_dir: Path | None) -> GWNotice:
    root = ET.fromstring(text)
    params = {p.get("name"): p.get("value") for p in root.iter() if _tag(p) == "Param"}
    groups = {g.get("type"): {p.get("name"): p.get("value") for p in g if _tag(p) == "Param"}
              for g in root.iter() if _tag(g) == "Group"}
    isotime = next((e.text for e in root.iter() if _tag(e) == "ISOTime"), None)
    date = next((e.text for e in root.iter() if _tag(e) == "Date"), None)
    url = params.get("skymap_fits") or params.get("Skymap_URL")
    notice = GWNotice(
        superevent_id=params.get("GraceID") or root.get("ivorn", "").split("#")[-1].split("-")[0],
        alert_type=str(params.get("AlertType", "")).upper(),
        time_created=Time(date) if date else None, event_time=Time(isotime) if isotime else None,
        far=float(params["FAR"]) if params.get("FAR") else None,
        significant=params.get("Significant") == "1" if "Significant" in params else None,
        classification={k: float(v) for k, v in groups.get("Classification", {}).items()},
        properties={k: float(v) for k, v in groups.get("Properties", {}).items()},
        instruments=[s for s in (params.get("Instruments") or "").split(",") if s],
        group=params.get("Group"), pipeline=params.get("Pipeline"), search=params.get("Search"),
        skymap_url=url)
    if url and skymap_dir is not None:
        local = skymap_dir / Path(url).name
        if local.exists():
            notice.skymap_path, notice.skymap = local, read_skymap(local)
    return notice


def _tag(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]
