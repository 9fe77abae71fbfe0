"""Subscriber-side alert filters that work on any survey's alert (see :mod:`.reader`)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ast3stream.alerts.reader import AlertView, view


@dataclass
class AlertFilter:
    """Keep an alert when every criterion that is set holds; ``None`` means "don't care".

    ``min_score``: real/bogus score >= this (alerts without a score fail);
    ``max_mag``: magnitude <= this (brighter);
    ``has_host``: a host galaxy was matched (True) or not (False);
    ``in_gw_field``: the alert lies in a field of an active GW ToO list (``gw_event`` set) or,
    when ``skymap`` is given, inside its ``credible_level`` region (e.g. for ZTF alerts);
    ``not_asteroid``: no known solar-system object within ``asteroid_radius_arcsec``.
    """

    min_score: float | None = None
    max_mag: float | None = None
    has_host: bool | None = None
    in_gw_field: bool | None = None
    not_asteroid: bool | None = None
    asteroid_radius_arcsec: float = 10.0
    skymap: object | None = None
    credible_level: float = 0.9

    def __call__(self, alert: Mapping | AlertView) -> bool:
        v = alert if isinstance(alert, AlertView) else view(alert)
        if self.min_score is not None and (v.score is None or v.score < self.min_score):
            return False
        if self.max_mag is not None and (v.mag is None or v.mag > self.max_mag):
            return False
        if self.has_host is not None and bool(v.has_host) != self.has_host:
            return False
        if self.in_gw_field is not None and self._in_gw(v) != self.in_gw_field:
            return False
        if self.not_asteroid is not None and self._asteroid(v) == self.not_asteroid:
            return False
        return True

    def _in_gw(self, v: AlertView) -> bool:
        if self.skymap is not None:
            from ast3stream.gw.skymap import credible_level_at

            return bool(credible_level_at(self.skymap, v.ra, v.dec) <= self.credible_level)
        return v.gw_event is not None

    def _asteroid(self, v: AlertView) -> bool:
        return v.ssnamenr is not None and (v.ss_sep_arcsec is None or v.ss_sep_arcsec <= self.asteroid_radius_arcsec)
