"""Real/bogus inference with the shipped weights (``ast3stream/models/rb_<lane>.pt``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .stamps import normalise
from .train import load_weights, pick_device, predict_proba

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


class RealBogus:
    """A trained real/bogus network for one lane.

    ``score`` takes raw stamps (N, 4, S, S) — difference, template, science in electrons and
    SNR in sigma, as cut by the detection stage — normalises them on the model's device with
    :func:`ast3stream.classify.stamps.normalise` and returns P(real) in [0, 1], in batches.
    """

    def __init__(self, model: torch.nn.Module, info: dict, device: torch.device, batch_size: int = 256):
        self.model, self.info, self.device, self.batch_size = model, info, device, batch_size
        self.version: str = info["version"]
        self.lane: str = info["config"]["lane"]
        self.stamp_size: int = int(info.get("stamp_size", 31 if self.lane == "qip" else 91))

    @classmethod
    def load(cls, lane: str, device: str = "auto", path: str | Path | None = None,
             batch_size: int = 256) -> "RealBogus":
        """Load ``rb_<lane>.pt`` from the package (or ``path``); FileNotFoundError if absent."""
        if lane not in ("qip", "dip"):
            raise ValueError(f"lane must be 'qip' or 'dip', got {lane!r}")
        path = Path(path) if path is not None else MODELS_DIR / f"rb_{lane}.pt"
        if not path.with_suffix(".pt").exists() or not path.with_suffix(".json").exists():
            raise FileNotFoundError(f"no real/bogus weights for lane {lane!r} at {path} (train with "
                                    "`ast3stream classify train` and copy them into ast3stream/models/)")
        dev = pick_device(device)
        model, info = load_weights(path, dev)
        return cls(model, info, dev, batch_size)

    def score(self, stamps: np.ndarray) -> np.ndarray:
        stamps = np.asarray(stamps)
        if stamps.ndim != 4 or stamps.shape[1:] != (4, self.stamp_size, self.stamp_size):
            raise ValueError(f"expected stamps (N, 4, {self.stamp_size}, {self.stamp_size}), got {stamps.shape}")
        x = torch.from_numpy(np.ascontiguousarray(stamps, dtype=np.float32))
        out = [predict_proba(self.model, normalise(x[i:i + self.batch_size].to(self.device)), self.device,
                             self.batch_size) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)
