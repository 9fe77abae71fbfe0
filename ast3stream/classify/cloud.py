"""Cloud classifier (seed paper sec. 4: ResNet-18, 7x7 stride-1 stem) on the quality stage's
256x256 inputs: the zscale thumbnail plus the transparency map of the catalogue stars.

A grey veil of 0.15–0.4 mag that dims every star alike is invisible in a zscale thumbnail (zscale
normalises it away, and the frame simulator, like scattered light, leaves the sky level alone),
but it is a 0.15–0.4 mag offset of the stars' zero point from the clear-sky one. So the network
sees three channels (:func:`to_input`): the thumbnail - 0.5, the transparency map
(:func:`ast3stream.quality.transparency.transparency_map`, extinction in mag on a coarse grid,
nearest-upsampled to the thumbnail; NaN -> 0) and its coverage (1 where stars measured it). Without
a map (no photometry) the last two channels are 0 and the verdict rests on the thumbnail alone.

The shipped model (``cloud.json``: version, training set, held-out accuracy by cloud depth) is
fine-tuned by :func:`train_cloud` on frame-simulator frames
(:mod:`ast3stream.classify.cloud_frames`). :func:`simulate_thumbnail` is a quick generator of
thumbnails alone, each pixel the mean of ``block`` x ``block`` detector pixels (4–60): sky
(g = 18–21 mag/arcsec^2) + read noise; stars with log N ~ 0.3 m (20000 deg^-2 to g = 21, drawn
to g = 23, zero point 27.2); flat-field and moonlight gradients of up to a few per cent. Its
cloudy frames get an extinction map A(x, y) [mag] that dims the stars: either a patchy Gaussian
random field with a power-law spectrum, ``depth * sigmoid(G / w)`` (0.15–2 mag peak), or the frame
simulator's smooth sum of six plane waves around a mean of 0.3–1.5 mag
(:mod:`ast3stream.simulate.atmosphere`); the sky is attenuated by a random fraction of A and may
get scattered light ~ A.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .model import CloudResNet, ResNet18Features
from .train import fit, load_weights, pick_device, predict_proba

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
_CACHE: dict = {}


def make_thumbnail(data: np.ndarray, size: int = 256) -> np.ndarray:
    """The quality stage's zscale thumbnail (canonical: :func:`ast3stream.quality.thumbnail.thumbnail`)
    of a bare image array; non-finite pixels count as the median."""
    from ..image import Frame
    from ..quality.thumbnail import thumbnail

    data = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(data)
    data = np.where(finite, data, np.median(data[finite]) if finite.any() else 0.0)
    return thumbnail(Frame(data, np.zeros(data.shape, np.uint16)), size)


def _zscale01(img: np.ndarray) -> np.ndarray:
    from astropy.visualization import ZScaleInterval

    vmin, vmax = ZScaleInterval().get_limits(img)
    return np.clip((img - vmin) / max(vmax - vmin, 1e-12), 0, 1).astype(np.float32)


def _random_field(rng: np.random.Generator, size: int, slope: float) -> np.ndarray:
    """Unit-variance Gaussian random field with power spectrum P(k) ~ k^-slope."""
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.rfftfreq(size), indexing="ij"))
    amp = np.where(k > 0, np.maximum(k, 1.0 / size) ** (-slope / 2), 0.0)
    f = np.fft.irfft2(amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)), (size, size))
    return f / f.std()


def _plane_waves(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit-scale sum of six long-wavelength plane waves (0.5–2.5 cycles per frame), as the frame simulator."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    a = np.zeros((size, size))
    for _ in range(6):
        k = rng.uniform(0.5, 2.5) * 2 * np.pi / size
        phi = rng.uniform(0, 2 * np.pi)
        a += np.cos(k * (np.cos(phi) * xx + np.sin(phi) * yy) + rng.uniform(0, 2 * np.pi))
    return a / np.sqrt(3)


def simulate_thumbnail(cloudy: bool, rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, float]:
    """One zscale thumbnail in [0, 1] and its mean extinction [mag] (0 when clear)."""
    block = int(rng.integers(4, 61))
    pixel_scale, zp, read_noise = 0.41, 27.2, 4.0
    sky = 10 ** (-0.4 * (rng.uniform(18.0, 21.0) - 5 * np.log10(pixel_scale) - zp))     # e-/px
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    a = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0, 0.03) * (np.cos(a) * xx + np.sin(a) * yy) - rng.uniform(0, 0.01) * (xx**2 + yy**2)
    if not cloudy:
        ext = np.zeros((size, size))
    elif rng.random() < 0.5:
        g = _random_field(rng, size, rng.uniform(2.5, 4.0))
        ext = rng.uniform(0.15, 2.0) / (1 + np.exp(-(g - rng.uniform(-1, 1.5)) / rng.uniform(0.2, 1.0)))
    else:
        ext = np.clip(rng.uniform(0.3, 1.5) * (1 + 0.4 * _plane_waves(rng, size)), 0, 3)
    area = (size * block * pixel_scale / 3600) ** 2                                        # deg^2
    n_stars = rng.poisson(20000 * area * 10 ** (0.3 * 2))                                  # to g = 23
    mag = np.maximum(23 + np.log10(rng.uniform(1e-9, 1, n_stars)) / 0.3, 10)
    pix = rng.integers(0, size * size, n_stars)
    stars = np.bincount(pix, 10 ** (-0.4 * (mag - zp)) / block**2, size * size).reshape(size, size)
    if block < 8:                                                                          # PSF spills over
        stars = gaussian_filter(stars, 3.0 / 2.3548 / block)
    sky_map = sky * grad * 10 ** (-0.4 * rng.uniform(0, 1) * ext)
    scatter = (rng.random() < 0.5) * rng.uniform(0, 0.5) * sky * ext / 2
    noise = rng.standard_normal((size, size)) * np.sqrt(sky + read_noise**2) / block
    img = stars * 10 ** (-0.4 * ext) + sky_map + scatter + noise
    return _zscale01(img), float(ext.mean())


def simulate_thumbnails(n: int, seed: int = 0, size: int = 256, workers: int = 1,
                        chunk: int = 500) -> dict[str, np.ndarray]:
    """Balanced set: ``thumbs`` (N, size, size) float32, ``label`` (1 = cloudy), ``depth`` [mag].

    Made in chunks of ``chunk`` (seed ``seed*100003 + i``); the result does not depend on ``workers``.
    """
    sizes = np.diff(np.linspace(0, n, max(1, int(np.ceil(n / chunk))) + 1).round().astype(int))
    jobs = [(int(m), seed * 100003 + i, size) for i, m in enumerate(sizes)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_thumbnail_chunk, jobs))
    else:
        parts = [_thumbnail_chunk(j) for j in jobs]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("thumbs", "label", "depth")}


def _thumbnail_chunk(job) -> dict[str, np.ndarray]:
    n, seed, size = job
    rng = np.random.default_rng(seed)
    label = (np.arange(n) % 2).astype(np.int8)
    rng.shuffle(label)
    thumbs = np.empty((n, size, size), np.float32)
    depth = np.empty(n, np.float32)
    for i, lab in enumerate(label):
        thumbs[i], depth[i] = simulate_thumbnail(bool(lab), rng, size)
    return dict(thumbs=thumbs, label=label, depth=depth)


class CloudNet(CloudResNet):
    """:class:`~.model.CloudResNet` with ``in_ch`` input channels (3: thumbnail, transparency, coverage)."""

    def __init__(self, in_ch: int = 3, width: int = 32, stem_pool: int = 4, dropout: float = 0.5):
        super().__init__(width, stem_pool, dropout)
        self.config["in_ch"] = in_ch
        self.features = ResNet18Features(in_ch, width, 7, 1, stem_pool)

    @classmethod
    def from_image_model(cls, model: CloudResNet) -> "CloudNet":
        """Three-channel copy of a thumbnail-only model, the new stem channels starting at 0."""
        new = cls(3, **model.config)
        state = model.state_dict()
        w = state["features.stem.0.weight"]
        state["features.stem.0.weight"] = torch.cat([w, torch.zeros_like(w).repeat(1, 2, 1, 1)], 1)
        new.load_state_dict(state)
        return new


def to_input(thumbs: np.ndarray, tmaps: np.ndarray | None = None) -> np.ndarray:
    """Network input (N, 3, H, W) from [0, 1] thumbnails (N, H, W) and transparency maps (N, g, g)
    [mag] (NaN: not measured; None: none at all); a single (H, W) thumbnail gives N = 1."""
    t = np.nan_to_num(np.asarray(thumbs, np.float32), nan=0.5)
    if t.ndim == 2:
        t = t[None]
        tmaps = None if tmaps is None else np.asarray(tmaps)[None]
    x = np.zeros((len(t), 3) + t.shape[1:], np.float32)
    x[:, 0] = t - 0.5
    if tmaps is not None:
        m = np.asarray(tmaps, np.float32)
        k = t.shape[1] // m.shape[1]
        m = m.repeat(k, axis=1).repeat(k, axis=2)
        x[:, 1] = np.nan_to_num(m, nan=0.0)
        x[:, 2] = np.isfinite(m)
    return x


def rotations(a: np.ndarray) -> np.ndarray:
    """The four 90-degree rotations of each (N, H, W) image or map (4N, H, W); :func:`~.train.fit`'s
    random flips complete the dihedral group (clouds and star fields have no preferred orientation)."""
    return np.concatenate([np.rot90(a, k, axes=(1, 2)) for k in range(4)])


def train_cloud(thumbs: np.ndarray, tmaps: np.ndarray, label: np.ndarray, val_thumbs: np.ndarray,
                val_tmaps: np.ndarray, val_label: np.ndarray, init: str | Path | None = None,
                drop_maps: float = 0.0, **fit_kwargs):
    """Train (or fine-tune the weights at ``init``, a thumbnail-only model too) on thumbnails and
    transparency maps augmented by :func:`rotations`, a ``drop_maps`` fraction of them (seeded by
    ``fit_kwargs['seed']``) without the map so that the thumbnail alone still gives a verdict;
    ``fit`` keeps the epoch of least validation loss. Returns (model, history)."""
    model = CloudNet()
    if init is not None:
        info = json.loads(Path(init).with_suffix(".json").read_text())
        model = (load_cloud_model(init, "cpu")[0] if "in_ch" in info["config"]
                 else CloudNet.from_image_model(load_weights(init)[0]))
    maps = rotations(tmaps).astype(np.float32)
    maps[np.random.default_rng(fit_kwargs.get("seed", 0)).random(len(maps)) < drop_maps] = np.nan
    x, y = to_input(rotations(thumbs), maps), np.tile(np.asarray(label, np.int64), 4)
    history = fit(model, x, y, to_input(val_thumbs, val_tmaps), np.asarray(val_label, np.int64), **fit_kwargs)
    return model, history


def load_cloud_model(path: str | Path | None = None, device: str = "auto"):
    """(model, info, device) for ``cloud.pt``; FileNotFoundError if absent."""
    path = Path(path) if path is not None else MODELS_DIR / "cloud.pt"
    path = path.with_suffix(".pt")
    if not path.exists():
        raise FileNotFoundError(f"no cloud-classifier weights at {path}")
    dev = pick_device(device)
    info = json.loads(path.with_suffix(".json").read_text())
    model = CloudNet(**info["config"])
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(dev).eval(), info, dev


def predict_cloudy(thumbnail: np.ndarray, transparency: np.ndarray | None = None) -> float | None:
    """P(cloudy) for one (256, 256) zscale thumbnail in [0, 1] and its transparency map
    (:func:`ast3stream.quality.transparency.transparency_map`); None if no model is shipped."""
    if "model" not in _CACHE:
        try:
            _CACHE["model"] = load_cloud_model(device="cpu")
        except FileNotFoundError:
            return None
    model, _, dev = _CACHE["model"]
    return float(predict_proba(model, to_input(thumbnail, transparency), dev)[0])


def cloud_model_version() -> str | None:
    path = MODELS_DIR / "cloud.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["version"]
