"""Difference imaging of any pair of FITS images (``ast3stream subtract``), callable from a notebook.

:func:`load_frame` reads an image (first HDU with 2-D data, or a named one) with optional
variance (variance / inverse variance / weight / error, an HDU of the same file named in
``subtraction.var_hdus`` or a sidecar file) and mask (a sidecar file: non-zero = bad);
:func:`mask_cosmics` flags cosmic-ray hits of a single exposure (L.A.Cosmic, van Dokkum 2001);
:func:`subtract_pair` aligns the science on the template (Lanczos, WCS; a pair without WCS
must be already aligned: same shape and matched stars within 0.5 px), subtracts (SFFT) and detects candidates;
:func:`write_products` writes the difference, sigma and SNR maps, the candidate table and a
diagnostic PNG (science, template, difference, SNR histogram against N(0, 1)).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..image import Frame, MaskBits
from .noise import VAR_KINDS, to_variance, weight_variance
from .subtract import Difference, subtract

#: ``[HDU name] -> kind`` of the variance planes looked for in an image's own file
DEFAULT_VAR_HDUS = {"VAR": "variance", "VARIANCE": "variance", "IVAR": "invvar", "INVVAR": "invvar",
                    "WHT": "weight", "WEIGHT": "weight", "ERR": "error", "ERROR": "error", "SIGMA": "error",
                    "UNCERT": "error"}


def _image_hdu(hdul, hdu=None):
    if hdu is not None:
        return hdul[hdu]
    for h in hdul:
        if h.is_image and h.data is not None and h.data.ndim == 2:
            return h
    raise ValueError(f"{hdul.filename()}: no 2-D image HDU")


def _plane(spec) -> np.ndarray:
    """Data of ``path`` or ``path[hdu]`` (first 2-D image HDU by default)."""
    spec = str(spec)
    hdu = None
    if spec.endswith("]") and "[" in spec:
        spec, hdu = spec[:-1].split("[", 1)
        hdu = int(hdu) if hdu.isdigit() else hdu
    with fits.open(spec) as hdul:
        return np.asarray(_image_hdu(hdul, hdu).data, np.float64)


def load_frame(path, hdu=None, var=None, var_kind: str = "variance", mask=None,
               var_hdus: dict | None = None) -> Frame:
    """A :class:`~ast3stream.image.Frame` of any FITS image (module docstring). ``var``: a sidecar
    variance plane (``path`` or ``path[hdu]``) of ``var_kind`` (:data:`~.noise.VAR_KINDS`); without
    it, an HDU of the image's file named in ``var_hdus`` (default :data:`DEFAULT_VAR_HDUS`) is used.
    A ``weight`` plane is relative: scaled to the image's sky noise (:func:`.noise.weight_variance`,
    the factor in the header as ``WHTSCALE``).
    ``mask``: a sidecar plane whose non-zero pixels are ``BAD``. Non-finite pixels are ``BAD``."""
    if var_kind not in VAR_KINDS:
        raise ValueError(f"var kind {var_kind!r} is not one of {VAR_KINDS}")
    var_hdus = DEFAULT_VAR_HDUS if var_hdus is None else var_hdus
    with fits.open(path) as hdul:
        h = _image_hdu(hdul, hdu)
        data = np.asarray(h.data, np.float32)
        header = h.header.copy()
        primary = hdul[0].header.copy() if h is not hdul[0] else fits.Header()
        raw = None
        if var is None:
            for x in hdul:
                if x is not h and x.name.upper() in var_hdus and x.data is not None and x.data.shape == data.shape:
                    raw, var_kind = np.asarray(x.data, np.float64), var_hdus[x.name.upper()]
                    break
    if var is not None:
        raw = _plane(var)
    if raw is not None and raw.shape != data.shape:
        raise ValueError(f"{path}: variance plane shape {raw.shape} differs from the image's {data.shape}")
    bad = ~np.isfinite(data)
    if mask is not None:
        m = _plane(mask)
        if m.shape != data.shape:
            raise ValueError(f"{path}: mask shape {m.shape} differs from the image's {data.shape}")
        bad |= m != 0
    plane = None
    if raw is not None and var_kind == "weight":
        plane, scale = weight_variance(raw, data, bad)
        header["WHTSCALE"] = (scale, "variance = WHTSCALE / weight (sky-noise scaled)")
    elif raw is not None:
        plane = to_variance(raw, var_kind)
    if plane is not None:
        bad |= ~np.isfinite(plane)
    out_mask = (bad * np.uint16(MaskBits.BAD)).astype(np.uint16)
    return Frame(data=np.where(np.isfinite(data), data, 0).astype(np.float32), mask=out_mask,
                 header=header, primary=primary, var=plane)


def mask_cosmics(frame: Frame, cfg) -> int:
    """Flag the cosmic-ray hits of a single exposure as ``COSMIC`` in ``frame.mask`` (in place);
    returns their number. L.A.Cosmic (:func:`ast3stream.reduction.detect_cosmics`) runs on the
    sky-subtracted image in electrons, with the sky rms as its "read noise" (the image's own
    noise floor, whether the sky was subtracted or not) and the sources' Poisson noise from the
    gain (header, else estimated from the pixels: :class:`.subtract.Prepared`). Without a usable
    gain (a variance plane that holds the source noise) nothing is flagged: such products (e.g.
    the legacypipe community pipeline's) come with their own masks."""
    from scipy.ndimage import maximum_filter

    from ..reduction import detect_cosmics
    from .subtract import Prepared

    p = Prepared(frame, cfg, np, maximum_filter)
    if not np.isfinite(p.gain):
        return 0
    rms = float(np.median(p.rms[~p.bad])) if (~p.bad).any() else 0.0
    electrons = np.where(p.bad, 0, p.sub * p.gain).astype(np.float32)
    saturation = p.gain * p.saturation if p.saturation is not None else 1e30
    hits = detect_cosmics(electrons, p.bad, rms * p.gain, saturation)
    frame.mask[hits[:, 0], hits[:, 1]] |= np.uint16(MaskBits.COSMIC)
    return len(hits)


def load_psf_model(spec) -> np.ndarray:
    """A PSFEx model file, ``FILE`` or ``FILE[CCD]`` (a row of a legacypipe merged file), as an
    image-pixel PSF of unit sum (resampled from the model's ``PSF_SAMP`` when it is not 1)."""
    from scipy.ndimage import zoom

    from .psf import psfex_model

    spec, ccd = str(spec), None
    if spec.endswith("]") and "[" in spec:
        spec, ccd = spec[:-1].split("[", 1)
    img, samp, _ = psfex_model(spec, ccd)
    if abs(samp - 1.0) > 1e-3:
        img = zoom(img, samp, order=3)
        if img.shape[0] % 2 == 0:
            img = img[:-1, :-1]
        img = img / img.sum()
    return img


def has_wcs(frame: Frame) -> bool:
    return frame.wcs.has_celestial


@dataclass
class PairResult:
    difference: Difference
    aligned: Frame
    template: Frame
    candidates: Table


def subtract_pair(science: Frame, template: Frame, cfg, zp: float | None = None, cosmics: bool = False,
                  psf_models: tuple | None = None) -> PairResult:
    """Align (when both have a WCS), subtract and detect (module docstring). ``zp``: the
    magnitude zero point for the candidate table (header ``MAGZPT``/``ZP``, else 25);
    ``cosmics``: first flag both frames' cosmic-ray hits (:func:`mask_cosmics`; single exposures);
    ``psf_models``: ``(science, template)`` PSF images for cutouts with too few stars
    (:func:`load_psf_model`, :func:`.subtract.subtract`)."""
    from ..alignment import align
    from ..alignment.measure import measure_alignment
    from ..detection import detect

    if cosmics:
        for frame in (science, template):
            mask_cosmics(frame, cfg)
    if has_wcs(science) and has_wcs(template):
        aligned = align(science, template, cfg)
    elif science.shape == template.shape:
        aligned = science
        m = measure_alignment(science, template, match_px=3.0, snr_min=20.0)
        if not (m["n_matched"] >= 5 and m["median_px"] < 0.5):
            raise ValueError(f"no WCS on both frames, and they are not aligned ({m['n_matched']} stars matched within "
                             f"3 px, median offset {m['median_px']:.2f} px): solve their astrometry first")
    else:
        raise ValueError(f"no WCS and shapes differ ({science.shape} vs {template.shape}): cannot align the pair")
    diff = subtract(aligned, template, cfg, psf_models=psf_models)
    if zp is None:
        zp = next((float(science.header[k]) for k in ("MAGZPT", "MAGZP", "ZP", "ZEROPT") if k in science.header), 25.0)
    cands, _ = detect(diff, aligned, template, diff.stats["fwhm_sci"], zp, cfg.detection, lane="dip")
    return PairResult(diff, aligned, template, cands)


def write_products(result: PairResult, out, stem: str = "diff") -> dict[str, Path]:
    """``{stem}.fits`` (difference, header with the noise check), ``{stem}_sigma.fits``,
    ``{stem}_snr.fits``, ``{stem}_cands.ecsv`` and ``{stem}.png`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = result.difference
    paths = {k: out / f"{stem}{suffix}" for k, suffix in
             (("diff", ".fits"), ("sigma", "_sigma.fits"), ("snr", "_snr.fits"), ("cands", "_cands.ecsv"),
              ("png", ".png"))}
    fits.HDUList([fits.PrimaryHDU(d.diff, d.header), fits.ImageHDU(d.mask.astype(np.int16), name="MASK")]).writeto(
        paths["diff"], overwrite=True)
    fits.PrimaryHDU(d.noise, d.header).writeto(paths["sigma"], overwrite=True)
    fits.PrimaryHDU(d.snr, d.header).writeto(paths["snr"], overwrite=True)
    result.candidates.write(paths["cands"], overwrite=True)
    _diagnostic_png(result, paths["png"])
    return paths


def _diagnostic_png(result: PairResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.difference
    fig, ax = plt.subplots(1, 4, figsize=(16, 4.2))
    for a, img, title in ((ax[0], result.aligned.data, "science (aligned)"), (ax[1], result.template.data, "template")):
        lo, hi = np.nanpercentile(img, [5, 99.5])
        a.imshow(img, origin="lower", cmap="gray", vmin=lo, vmax=hi)
        a.set_title(title)
    ax[2].imshow(d.snr, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
    c = result.candidates
    if len(c):
        ax[2].scatter(c["x"], c["y"], s=60, facecolors="none", edgecolors="lime")
    ax[2].set_title(f"difference / sigma ({len(c)} candidates)")
    z = d.snr[d.mask == 0]
    z = z[np.isfinite(z)]
    bins = np.linspace(-6, 6, 121)
    ax[3].hist(z, bins=bins, density=True, histtype="step", label="difference")
    ax[3].plot(bins, np.exp(-bins ** 2 / 2) / np.sqrt(2 * np.pi), label="N(0, 1)")
    ax[3].set_yscale("log")
    ax[3].set_ylim(1e-6, 1)
    s = d.stats
    ax[3].set_title(f"rstd {s.get('x2nrm_rstd', np.nan):.2f}  aperture noise ratio {s.get('noise_ratio', np.nan):.2f}")
    ax[3].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def add_cli(subparsers) -> None:
    """Register ``subtract SCIENCE TEMPLATE [--science-var ...] [--template-var ...] --out DIR``."""
    p = subparsers.add_parser("subtract", help="align and subtract any pair of FITS images (difference, sigma, "
                                                 "SNR, candidates, PNG)")
    p.add_argument("science")
    p.add_argument("template")
    p.add_argument("--out", default=".", help="output directory")
    p.add_argument("--stem", default="diff")
    for who in ("science", "template"):
        p.add_argument(f"--{who}-hdu", help="image HDU (index or name; default: the first 2-D image)")
        p.add_argument(f"--{who}-var", help="variance plane file, FILE or FILE[HDU]")
        p.add_argument(f"--{who}-var-kind", default="variance", choices=VAR_KINDS)
        p.add_argument(f"--{who}-mask", help="mask file (non-zero = bad)")
        p.add_argument(f"--{who}-psf", help="PSFEx model, FILE or FILE[CCD]: the kernel's fallback with too few stars")
    p.add_argument("--zp", type=float, help="magnitude zero point for the candidate table")
    p.add_argument("--cosmics", action="store_true", help="flag cosmic-ray hits in both frames first (single exposures)")
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--kernel-hw-ratio", type=float, default=2.0,
                   help="SFFT kernel half-width = ceil(RATIO x the larger FWHM), capped by "
                        "subtraction.kernel_half_width (default 2, as sfft's packets; 0: that width, fixed)")
    p.add_argument("--noise-aperture-fwhm", type=float,
                   help="radius of the noise check's random apertures in FWHM (default: "
                        "subtraction.noise_aperture_fwhm, 1; 0.5 where that leaves fewer than 100 independent ones)")
    p.set_defaults(func=_cmd_subtract)


def _cmd_subtract(args) -> int:
    import json

    from ..config import Settings

    cfg = Settings.load(args.config)
    cfg.subtraction.kernel_half_width_ratio = args.kernel_hw_ratio or None
    if args.noise_aperture_fwhm is not None:
        cfg.subtraction.noise_aperture_fwhm = args.noise_aperture_fwhm
    hdu = lambda v: int(v) if v is not None and v.isdigit() else v  # noqa: E731
    frames = [load_frame(getattr(args, w), hdu(getattr(args, f"{w}_hdu")), getattr(args, f"{w}_var"),
                         getattr(args, f"{w}_var_kind"), getattr(args, f"{w}_mask"))
              for w in ("science", "template")]
    models = (tuple(load_psf_model(getattr(args, f"{w}_psf")) for w in ("science", "template"))
              if args.science_psf and args.template_psf else None)
    result = subtract_pair(*frames, cfg, zp=args.zp, cosmics=args.cosmics, psf_models=models)
    paths = write_products(result, args.out, args.stem)
    s = result.difference.stats
    keep = ("conv", "fwhm_sci", "fwhm_ref", "n_stars", "flux_ratio", "x2nrm_rstd", "noise_ratio", "gain_sci",
            "gain_ref", "gain_method_sci", "gain_method_ref", "seconds")
    print(json.dumps({**{k: s.get(k) for k in keep}, "candidates": len(result.candidates),
                      "files": {k: str(v) for k, v in paths.items()}}, indent=1, default=float))
    return 0
