"""Which GW notices the survey follows (the ``gw`` section's notice policy).

A notice is followed unless one rule says otherwise; the first that does gives the reason,
which is logged and stored with the notice:

* mock superevents (ids ``M...``: LVK's mock / MDC stream) only with ``test_mode``;
* the search group (CBC, Burst) must be in ``groups``;
* ``significant`` must not be false with ``require_significant`` (LVK sets it for FAR
  below its public-alert threshold, about one per month for CBC, one per year for bursts);
* FAR at most ``max_far_per_year`` when set;
* p(Terrestrial) at most ``max_terrestrial`` when set;
* EARLYWARNING notices only with ``early_warning``.

A RETRACTION is followed whenever its superevent would be (a mock retraction in test mode
only), whatever the rest of the notice says.
"""
from __future__ import annotations

from typing import NamedTuple

from ast3stream.gw.notices import GWNotice

YEAR_S = 365.25 * 86400


class Decision(NamedTuple):
    follow: bool
    reason: str


def is_mock(notice: GWNotice) -> bool:
    """LVK mock events: superevent ids starting with ``M`` (``MS...``) or the ``MDC`` search."""
    return notice.superevent_id.startswith("M") or (notice.search or "").upper() == "MDC"


def judge(notice: GWNotice, gw) -> Decision:
    """Follow ``notice`` or not under the policy of the ``gw`` section, with the reason."""
    sid = notice.superevent_id
    if is_mock(notice) and not gw.test_mode:
        return Decision(False, f"{sid} is a mock event (only followed in test mode)")
    if notice.is_retraction:
        return Decision(True, "retraction")
    if notice.group is not None and notice.group not in gw.groups:
        return Decision(False, f"group {notice.group} is not followed (gw.groups = {list(gw.groups)})")
    far_yr = None if notice.far is None else notice.far * YEAR_S
    far_text = "" if far_yr is None else f" (FAR {far_yr:.3g} per year)"
    if gw.require_significant and notice.significant is False:
        return Decision(False, f"not significant{far_text}")
    if gw.max_far_per_year is not None and far_yr is not None and far_yr > gw.max_far_per_year:
        return Decision(False, f"FAR {far_yr:.3g} per year is above gw.max_far_per_year = {gw.max_far_per_year:g}")
    terrestrial = notice.classification.get("Terrestrial")
    if gw.max_terrestrial is not None and terrestrial is not None and terrestrial > gw.max_terrestrial:
        return Decision(False, f"p(Terrestrial) = {terrestrial:.3f} is above gw.max_terrestrial = {gw.max_terrestrial:g}")
    if notice.alert_type == "EARLYWARNING" and not gw.early_warning:
        return Decision(False, "early-warning notices are not followed (gw.early_warning = false)")
    return Decision(True, f"followed{far_text}")
