"""Alert filters that work on any survey's alert (see :mod:`.reader`): the subscriber's fixed
flags (:class:`AlertFilter`), and named filter streams (:class:`FilterSpec`: a safe expression,
a watchlist, a MOC region) that ``agents.filterstream`` runs server-side."""
from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

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


# ---- filter streams: named server-side filters, each with its own topic ----------------------

#: names an expression may use: the common view's fields (any survey), plus ``asteroid``
VIEW_NAMES = ("survey", "object_id", "candid", "mjd", "ra", "dec", "mag", "mag_err", "filter", "isdiffpos",
              "score", "maglim", "ssnamenr", "ss_sep_arcsec", "has_host", "gw_event", "gw_credible_level")
ASTEROID_RADIUS_ARCSEC = 10.0
FILTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}


class FilterError(ValueError):
    """A filter that cannot be used: bad name, bad expression, bad region."""


class Expression:
    """A small, safe expression over an alert: ``score >= 0.8 and not asteroid and mag < 19``.

    Grammar (parsed with :mod:`ast`, evaluated by walking the tree; never ``eval``): ``and``,
    ``or``, ``not``, comparisons ``< <= > >= == !=`` (chainable), ``in`` / ``not in`` a list of
    constants, ``is None`` / ``is not None``, numbers, strings, ``True``/``False``/``None``, unary
    minus, and names: the common view's fields (:data:`VIEW_NAMES`), ``asteroid`` (a known
    solar-system object within 10″), or a dotted path into the survey's own record such as
    ``candidate.drb`` or ``crossmatch.host_id``. A comparison with a missing (null) value is false.
    """

    def __init__(self, text: str):
        self.text = text
        try:
            self.tree = ast.parse(text, mode="eval").body
        except SyntaxError as exc:
            raise FilterError(f"filter expression {text!r}: {exc.msg} at column {exc.offset}") from None
        self._check(self.tree)

    def _check(self, node) -> None:
        if isinstance(node, ast.BoolOp) or (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub))):
            for child in (node.values if isinstance(node, ast.BoolOp) else [node.operand]):
                self._check(child)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if not isinstance(op, (*_COMPARE, ast.In, ast.NotIn, ast.Is, ast.IsNot)):
                    raise FilterError(f"filter expression {self.text!r}: operator {type(op).__name__} is not allowed")
            for child in (node.left, *node.comparators):
                self._check(child)
        elif isinstance(node, (ast.List, ast.Tuple)):
            if not all(isinstance(e, ast.Constant) for e in node.elts):
                raise FilterError(f"filter expression {self.text!r}: lists may hold constants only")
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str, bool, type(None))):
                raise FilterError(f"filter expression {self.text!r}: constant {node.value!r} is not allowed")
        elif isinstance(node, (ast.Name, ast.Attribute)):
            self._path(node)
        else:
            raise FilterError(f"filter expression {self.text!r}: {type(node).__name__} is not allowed "
                              "(use names, constants, comparisons, and/or/not)")

    def _path(self, node) -> tuple[str, ...]:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise FilterError(f"filter expression {self.text!r}: only plain names and dotted fields are allowed")
        parts.append(node.id)
        path = tuple(reversed(parts))
        if any(part.startswith("_") for part in path):
            raise FilterError(f"filter expression {self.text!r}: names may not start with '_'")
        if len(path) == 1 and path[0] not in (*VIEW_NAMES, "asteroid"):
            raise FilterError(f"filter expression {self.text!r}: unknown name {path[0]!r}; use one of "
                              f"{', '.join((*VIEW_NAMES, 'asteroid'))} or a record path such as candidate.drb")
        return path

    def __call__(self, alert: Mapping | AlertView) -> bool:
        v = alert if isinstance(alert, AlertView) else view(alert)
        return bool(self._eval(self.tree, v))

    def _eval(self, node, v: AlertView):
        if isinstance(node, ast.BoolOp):
            values = (self._eval(n, v) for n in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, v)
            if isinstance(node.op, ast.Not):
                return not value
            return None if value is None else -value
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, v)
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, v)
                if isinstance(op, ast.Is):
                    ok = left is right
                elif isinstance(op, ast.IsNot):
                    ok = left is not right
                elif left is None or right is None:
                    ok = False
                elif isinstance(op, (ast.In, ast.NotIn)):
                    ok = (left in right) == isinstance(op, ast.In)
                else:
                    try:
                        ok = _COMPARE[type(op)](left, right)
                    except TypeError:
                        ok = False
                if not ok:
                    return False
                left = right
            return True
        if isinstance(node, (ast.List, ast.Tuple)):
            return [e.value for e in node.elts]
        if isinstance(node, ast.Constant):
            return node.value
        path = self._path(node)
        if path == ("asteroid",):
            return v.ssnamenr is not None and (v.ss_sep_arcsec is None or v.ss_sep_arcsec <= ASTEROID_RADIUS_ARCSEC)
        if len(path) == 1:
            return getattr(v, path[0])
        value = v.record
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        return value


@dataclass
class FilterSpec:
    """A named filter stream: alerts of ``lanes`` that pass the expression, lie within
    ``watchlist`` radius of one of its positions (when given) and inside ``moc`` (NUNIQ HEALPix
    cells, e.g. a GW sky map's 90 % region; when given) go to ``{prefix}.filter.NAME.{lane}``."""

    name: str
    expr: str | None = None
    watchlist: list[tuple[float, float, float]] = field(default_factory=list)  #: (ra, dec, radius_arcsec)
    moc: list[int] = field(default_factory=list)
    lanes: list[str] = field(default_factory=lambda: ["qip", "dip"])
    description: str = ""

    def __post_init__(self):
        if not FILTER_NAME.fullmatch(self.name):
            raise FilterError(f"filter name {self.name!r}: use 1-64 letters, digits, '_' or '-'")
        self.watchlist = [tuple(float(x) for x in w) for w in self.watchlist]
        self.moc = [int(u) for u in self.moc]
        if any(u < 4 for u in self.moc):
            raise FilterError(f"filter {self.name}: MOC cells must be NUNIQ indices (>= 4)")
        self._expr = Expression(self.expr) if self.expr else None
        self._region = None

    def to_json(self) -> bytes:
        return json.dumps({k: getattr(self, k) for k in ("name", "expr", "watchlist", "moc", "lanes", "description")},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "FilterSpec":
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError) as exc:
            raise FilterError(f"not a filter: {exc}") from None

    def __call__(self, alert: Mapping | AlertView) -> bool:
        v = alert if isinstance(alert, AlertView) else view(alert)
        if self._expr is not None and not self._expr(v):
            return False
        if self.watchlist and not any(_sep_arcsec(v.ra, v.dec, ra, dec) <= r for ra, dec, r in self.watchlist):
            return False
        return not self.moc or self._in_moc(v.ra, v.dec)

    def _in_moc(self, ra: float, dec: float) -> bool:
        from astropy.table import Table

        from ast3stream.gw.skymap import rows_at

        if self._region is None:
            self._region = Table({"UNIQ": self.moc})
        return bool(rows_at(self._region, ra, dec)[0] >= 0)


def credible_region_moc(skymap, level: float = 0.9) -> list[int]:
    """The NUNIQ cells of a sky map's ``level`` credible region (a MOC), e.g. for a watch-map."""
    import numpy as np

    from ast3stream.gw.skymap import credible_levels

    return [int(u) for u in np.asarray(skymap["UNIQ"])[credible_levels(skymap) <= level]]


def _sep_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle separation (haversine) [arcsec]."""
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h)))) * 3600
