"""Versioned real/bogus training sets: one compressed ``.npz`` plus a ``.json`` manifest.

Arrays: ``stamps`` (N, 4, SIZE, SIZE) float32 model inputs (:mod:`.stamps`), ``label`` int8 (1 = real),
``kind`` int8 (index into ``kinds`` of the manifest), ``snr`` float32 (candidate SNR), and whatever
else the source adds (alert sets: ``survey``, ``object_id``, ``night``, ``ref``, ``weight`` ...;
image sets: ``group`` = field).
The manifest records the lane, counts per kind, how the set was made and a content hash;
``version`` is ``rbset-<lane>-<n>-<sha8>``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .stamps import CHANNELS, PX_PER_FWHM, pipeline_stamps
from .synth import KINDS, simulate_set

ARRAYS = ("stamps", "label", "kind", "snr")


def content_hash(data: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(data):
        h.update(np.ascontiguousarray(data[key]).tobytes())
    return h.hexdigest()


def save_dataset(path: str | Path, data: dict[str, np.ndarray], lane: str, kinds=KINDS,
                 compress: bool = True, **provenance) -> dict:
    """Write ``path`` (.npz) and ``path.with_suffix('.json')``; return the manifest."""
    path = Path(path).with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compress else np.savez)(path, **data)
    sha = content_hash(data)
    n = len(data["label"])
    counts = np.bincount(data["kind"].astype(int), minlength=len(kinds)) if "kind" in data else []
    manifest = dict(
        version=f"rbset-{lane}-{n}-{sha[:8]}", lane=lane, n=n,
        n_real=int((data["label"] == 1).sum()), n_bogus=int((data["label"] == 0).sum()),
        stamp_size=int(data["stamps"].shape[-1]), channels=list(CHANNELS), stamp="ast3stream.classify.stamps.make_stamp",
        px_per_fwhm=PX_PER_FWHM,
        kinds=list(kinds), counts={k: int(c) for k, c in zip(kinds, counts)}, sha256=sha,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **provenance,
    )
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    return manifest


def load_dataset(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a set written by :func:`save_dataset`; returns (arrays, manifest)."""
    path = Path(path).with_suffix(".npz")
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    manifest_path = path.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return data, manifest


def concat(*sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in sets]) for k in ARRAYS if all(k in s for s in sets)}


def _chunk(args):
    d = simulate_set(*args)
    d["stamps"] = pipeline_stamps(d.pop("stamps"), d.pop("fwhm"))
    return d


def build_synthetic(lane: str, n_real: int = 10_000, n_bogus: int = 10_000, seed: int = 0,
                    snr_range: tuple[float, float] = (8.0, 300.0), workers: int = 1,
                    chunk: int = 1000) -> dict[str, np.ndarray]:
    """A balanced set from :mod:`.synth` as model inputs, made in chunks of ``chunk`` stamps (seed ``seed*100003 + i``).

    The result depends only on (lane, n_real, n_bogus, seed, snr_range, chunk), not on ``workers``.
    """
    n_chunks = max(1, int(np.ceil((n_real + n_bogus) / chunk)))
    reals = np.diff(np.linspace(0, n_real, n_chunks + 1).round().astype(int))
    boguses = np.diff(np.linspace(0, n_bogus, n_chunks + 1).round().astype(int))
    jobs = [(int(r), int(b), lane, seed * 100003 + i, tuple(snr_range)) for i, (r, b) in enumerate(zip(reals, boguses))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_chunk, jobs))
    else:
        parts = [_chunk(j) for j in jobs]
    return concat(*parts)
