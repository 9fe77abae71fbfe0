"""Template acceptance: the earliest reduced image of a field that passes these cuts."""
from __future__ import annotations

import math

#: quality flags (from the single-image stages) that disqualify a template
REJECT_FLAGS = frozenset({"cloudy", "bad_wcs", "bad_zp", "trail", "saturated_field", "bad_pcc"})


def is_acceptable(stats: dict, flags: list, cfg) -> tuple[bool, str]:
    """``(ok, reason)`` for a reduced image with ``stats`` (``maglim``, ``pcc``) and quality ``flags``.

    Accepted when ``maglim >= cfg.template.maglim_min``, ``pcc >= cfg.template.pcc_min`` and no
    flag in :data:`REJECT_FLAGS` is set; ``reason`` names the first failed cut ("" when accepted).
    """
    tc = cfg.template
    bad = sorted(REJECT_FLAGS.intersection(flags))
    if bad:
        return False, f"flagged {','.join(bad)}"
    maglim = stats.get("maglim")
    if maglim is None or not math.isfinite(maglim) or maglim < tc.maglim_min:
        return False, f"maglim {maglim} < {tc.maglim_min}"
    pcc = stats.get("pcc")
    if pcc is None or not math.isfinite(pcc) or pcc < tc.pcc_min:
        return False, f"pcc {pcc} < {tc.pcc_min}"
    return True, ""
