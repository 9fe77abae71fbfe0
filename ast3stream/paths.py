"""The one sanitiser for path components that come from outside.

FITS headers (``EXPID``, ``FIELD``, ``OBJECT``), file names, message fields (exposure ids,
a foreign alert's ``objectId``) and notice ids all end up in folder or file names. Each
such component must be a plain name: letters, digits and ``._+:-``, starting with a letter
or digit, at most 128 characters; so no ``/``, no ``..``, no absolute path, no hidden
file, no control characters. Anything else is refused with :class:`UnsafeName`, which says
what was wrong; nothing is silently rewritten, so two different inputs never share a file.
"""
from __future__ import annotations

import re
from pathlib import Path

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:-]{0,127}")  # use fullmatch


class UnsafeName(ValueError):
    """A path component from outside that is not a plain name."""


def safe_name(value: str, what: str = "name") -> str:
    """``value`` when it is a plain name (see the module docstring), else :class:`UnsafeName`."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise UnsafeName(f"{what} {str(value)[:80]!r} is not a plain name of letters, digits and ._+:- "
                         "(at most 128 characters, starting with a letter or digit)")
    return value


def inside(root: str | Path, *parts: str, what: str = "name") -> Path:
    """``root/part/...`` with every part a safe name; the result is checked to stay under ``root``."""
    root = Path(root).resolve()
    path = root.joinpath(*(safe_name(p, what) for p in parts)).resolve()
    if path != root and root not in path.parents:  # a symlink inside the folder pointing out
        raise UnsafeName(f"{what} {'/'.join(parts)[:80]!r} leads outside {root}")
    return path
