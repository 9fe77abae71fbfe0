"""Real/bogus inference with the shipped weights (``ast3stream/models/rb_<lane>.pt``).

Scores are calibrated: ``P(real) = sigmoid(a m + b)``, ``m`` the network's margin ``l1 - l0`` or,
when the weights' JSON has a ``hybrid`` combiner (:mod:`.hybrid`), the boosted trees' log-odds of
``[l1 - l0, stamp features]``; ``a``, ``b`` (Platt scaling) were fitted out of fold and are stored
in the JSON (``calibration``) with the alert ``threshold`` chosen from a target false-positive rate.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .stamps import SIZE, alert_stamp, pipeline_stamps
from .train import load_weights, pick_device

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


@torch.no_grad()
def logit_margin(model: torch.nn.Module, x: np.ndarray | torch.Tensor, device: torch.device,
                 batch_size: int = 512) -> np.ndarray:
    """``l1 - l0`` of the network for model inputs ``x`` (N, 4, SIZE, SIZE), in batches."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i:i + batch_size]).to(device, torch.float32)
        logits = model(xb).float()
        out.append((logits[:, 1] - logits[:, 0]).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


class RealBogus:
    """A trained real/bogus network for one lane.

    :meth:`score` takes the detection stage's raw stamps (N, 4, S, S) — difference, template,
    science in electrons and SNR in sigma — with the frame's PSF FWHM and the candidates' signs;
    :meth:`score_alerts` takes foreign alerts' triplets; :meth:`score_inputs` model inputs made by
    :mod:`ast3stream.classify.stamps`. All return calibrated P(real) in [0, 1].
    """

    def __init__(self, model: torch.nn.Module, info: dict, device: torch.device, batch_size: int = 256):
        self.model, self.info, self.device, self.batch_size = model, info, device, batch_size
        self.version: str = info["version"]
        self.lane: str = info["config"]["lane"]
        self.stamp_size: int = int(info.get("stamp_size", SIZE))
        cal = info.get("calibration") or {}
        self.a, self.b = float(cal.get("a", 1.0)), float(cal.get("b", 0.0))
        self.combiner: dict | None = (info.get("hybrid") or {}).get("boost")

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

    def score_inputs(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or x.shape[1:] != (4, self.stamp_size, self.stamp_size):
            raise ValueError(f"expected model inputs (N, 4, {self.stamp_size}, {self.stamp_size}), got {x.shape}")
        margin = logit_margin(self.model, x, self.device, self.batch_size)
        if self.combiner is not None and len(x):
            from .boost import boost_margin
            from .hybrid import hybrid_inputs

            margin = boost_margin(self.combiner, hybrid_inputs(margin, x))
        return (1 / (1 + np.exp(-(self.a * margin + self.b)))).astype(np.float32)

    def score(self, stamps: np.ndarray, fwhm_px: float | np.ndarray, positive: np.ndarray | None = None) -> np.ndarray:
        stamps = np.asarray(stamps)
        if stamps.ndim != 4 or stamps.shape[1] != 4 or stamps.shape[2] != stamps.shape[3]:
            raise ValueError(f"expected raw stamps (N, 4, S, S), got {stamps.shape}")
        if len(stamps) == 0:
            return np.zeros(0, np.float32)
        return self.score_inputs(pipeline_stamps(stamps, fwhm_px, positive, self.stamp_size))

    def score_alerts(self, triplets) -> np.ndarray:
        x = [alert_stamp(t, self.stamp_size) for t in triplets]
        return self.score_inputs(np.stack(x)) if x else np.zeros(0, np.float32)
