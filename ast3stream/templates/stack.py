"""A deeper template from several epochs of a field: registered, scaled, weighted, clipped co-add.

1. epochs whose fitted PSF FWHM (:func:`~ast3stream.subtraction.psf.measure_psf`) exceeds
   ``template.stack_fwhm_ratio`` times the sharpest's are left out (at least the two sharpest
   stay): the stack's PSF is the weighted mix of the epochs', and on the LT series a mix of
   3.8-4.8 px epochs left 6-10 residuals on template stars against a 4.8 px science frame that
   SFFT's kernel, fitted on the mix, could not match, where the three within 10 % left none
   (Gaussian homogenisation to the broadest epoch, tried, left 6-10 as well);
2. the reference grid is the sharpest epoch's; every other epoch is Lanczos-resampled onto it
   (:func:`~ast3stream.alignment.align`, WCS plus star refinement; epochs without a WCS must
   already be aligned);
3. each epoch is sky-subtracted and put on the reference's photometric scale: ``s_i``, the
   median flux ratio of the reference's isolated stars measured in it (prior-banned as for
   SFFT's sub-areas, :func:`~ast3stream.subtraction.stars.pair_stars`);
4. weights for point sources, ``w_i = s_i^2 / (sigma_i^2 FWHM_i^2)`` (``sigma_i`` the sky rms:
   depth and seeing), normalised;
5. per pixel, values more than ``clip`` sigma (with half the median added in quadrature: seeing
   changes star cores) from the median of the epochs (cosmic rays, satellites, asteroids,
   variables in outburst) are rejected when three or more epochs cover it, then the weighted
   mean; its variance ``sum w_i^2 v_i / (sum w_i)^2`` from each epoch's per-pixel variance (sky
   plus sources, :class:`~ast3stream.subtraction.subtract.Prepared`) is the stack's ``VAR``
   plane; pixels no epoch covers are ``EDGE``;
6. source pixels (within one FWHM of a 3-sigma stack pixel) that an epoch's mask leaves out
   (edge, bad pixels, cosmic rays, saturation) keep that epoch's flags: such a star is a
   different mix of PSFs from the rest, and SFFT's least squares, dominated by the brightest
   sub-area stars, fitted on one of them gave a kernel that left residuals at faint stars
   field-wide (LT frames 2 and 5 stacked, the field's brightest star off frame 2's edge: 10
   against frame 6, 0 with those pixels flagged). Sky pixels an epoch lacks are filled by the
   others, and so are clipped pixels (a transient in one epoch on its host must not mask the
   host in later differences); a single-epoch template masks its own flagged pixels anyway;
7. the depth gain over the reference, ``DEPTHGN = 2.5 log10(sigma_ref / sigma_stack)`` (sky rms,
   the stack's from the median of its ``VAR``), for point sources of the reference's PSF.

``NCOMBINE`` (epochs used), ``STACKREF`` (index in ``frames``) and the weights (0 for an epoch
left out) and scales go into the header; the saturation and gain cards are dropped (the ``VAR``
plane holds the noise, sources included).
"""
from __future__ import annotations

import numpy as np

from ..image import Frame, MaskBits

_UNUSABLE = np.uint16(0xFFFF & ~int(MaskBits.INTERP))


def stack_frames(frames: list[Frame], cfg, clip: float = 5.0) -> Frame:
    """Co-add ``frames`` (one field, several epochs) into one template Frame with a ``VAR`` plane
    (module docstring). ``cfg`` is the settings (its ``subtraction`` section and
    ``template.stack_fwhm_ratio`` are used)."""
    from scipy.ndimage import maximum_filter

    from ..alignment import align
    from ..subtraction.pair import has_wcs
    from ..subtraction.stars import pair_stars, select_stars
    from ..subtraction.subtract import Prepared

    if len(frames) < 2:
        raise ValueError(f"a stack needs at least 2 epochs, got {len(frames)}")
    preps = [Prepared(f, cfg, np, maximum_filter) for f in frames]
    stars = [select_stars(p.sub, p.bad, p.rms, cfg, p.saturation) for p in preps]
    fwhm = np.array([float(s.meta["fwhm"]) for s in stars])
    ref = int(np.argmin(fwhm))
    tpl = frames[ref]
    use = fwhm <= cfg.template.stack_fwhm_ratio * fwhm[ref]
    if use.sum() < 2:
        use[np.argsort(fwhm)[:2]] = True
    aligned = []
    for i, f in enumerate(frames):
        if not use[i]:
            aligned.append(None)
            continue
        if i == ref:
            aligned.append((f, preps[i]))
            continue
        if has_wcs(f) and has_wcs(tpl):
            a = align(f, tpl, cfg, gpu=False)
        elif f.shape == tpl.shape:
            a = f
        else:
            raise ValueError(f"epoch {i} has no WCS and another shape than the reference: cannot register it")
        aligned.append((a, Prepared(a, cfg, np, maximum_filter)))
    idx = np.flatnonzero(use)
    stars, fwhm, aligned = [stars[i] for i in idx], fwhm[idx], [aligned[i] for i in idx]
    ref = int(np.flatnonzero(idx == ref)[0])
    scale, sky = np.ones(len(idx)), np.ones(len(idx))
    for i, (a, p) in enumerate(aligned):
        sky[i] = float(np.median(p.rms[~p.bad])) if (~p.bad).any() else np.inf
        if i != ref:
            pairs = pair_stars(stars[ref], p.sub, p.bad, p.rms, cfg)
            use = np.asarray(pairs["use"], bool)
            if use.sum() < 3:
                raise RuntimeError(f"epoch {i}: only {int(use.sum())} stars in common with the reference; cannot scale it")
            scale[i] = float(np.median(np.asarray(pairs["ratio"])[use]))
    w = scale ** 2 / (sky ** 2 * fwhm ** 2)
    w = w / w.sum()
    vals = np.stack([p.sub / s for (_, p), s in zip(aligned, scale)]).astype(np.float32)
    var = np.stack([p.var / s ** 2 for (_, p), s in zip(aligned, scale)]).astype(np.float32)
    good = np.stack([~p.bad for _, p in aligned]) & np.isfinite(vals) & np.isfinite(var)
    if len(idx) >= 3:
        med = np.nanmedian(np.where(good, vals, np.nan), axis=0)
        n_good = good.sum(axis=0)
        # the tolerance includes half the median: the epochs' seeing differs, and bright star
        # cores differ by tens of per cent between them without being outliers
        tol = clip * np.sqrt(var + (0.5 * med) ** 2)
        good &= ~((np.abs(vals - med) > tol) & (n_good >= 3))
    wk = np.where(good, w[:, None, None], 0.0)
    wsum = wk.sum(axis=0)
    covered = wsum > 0
    data = np.where(covered, (wk * np.where(good, vals, 0)).sum(axis=0) / np.where(covered, wsum, 1), 0)
    v = np.where(covered, (wk ** 2 * np.where(good, var, 0)).sum(axis=0) / np.where(covered, wsum, 1) ** 2, np.inf)
    # pixels no epoch covers keep the epochs' flags (saturated cores ...), EDGE when none had one
    flags = np.bitwise_or.reduce(np.stack([p.mask for _, p in aligned]), axis=0).astype(np.uint16)
    flags = np.where(flags & _UNUSABLE, flags, flags | np.uint16(MaskBits.EDGE))
    mask = np.where(covered, flags & ~_UNUSABLE, flags).astype(np.uint16)
    # source pixels that an epoch's mask leaves out hold another mix of the epochs' PSFs than the
    # rest of the stack: they keep that epoch's flags, so that such a star is no SFFT sub-area star
    src = maximum_filter(data > 3 * np.sqrt(v), size=2 * int(round(fwhm[ref])) + 1)
    missing = np.bitwise_or.reduce(np.stack([np.where(g, 0, p.mask) for g, (_, p) in zip(good, aligned)]), axis=0)
    lacking = covered & src & ((missing & _UNUSABLE) != 0)
    mask[lacking] |= (missing[lacking] & _UNUSABLE).astype(np.uint16)
    header = tpl.header.copy()
    for key in ("RSVAR", "RSFRACX", "RSFRACY"):
        header.remove(key, ignore_missing=True)
    header["NCOMBINE"] = (len(idx), "epochs in the stacked template")
    header["STACKREF"] = (int(idx[ref]), "index of the reference (sharpest) epoch")
    for i in range(len(frames)):   # indices of the epochs given; those left out (seeing) weigh 0
        k = np.flatnonzero(idx == i)
        wi, si = (w[k[0]], scale[k[0]]) if k.size else (0.0, np.nan)
        header[f"STKW{i}"] = (round(float(wi), 5), f"weight of epoch {i}")
        if k.size:
            header[f"STKS{i}"] = (round(float(si), 5), f"flux scale of epoch {i} to the reference")
    # one saturation level and one gain no longer describe the stack: its VAR plane holds the noise
    for key in (cfg.subtraction.saturation_key, cfg.subtraction.gain_key):
        header.remove(key, ignore_missing=True)
    # point-source depth gain over the reference epoch: its sky noise over the stack's (same PSF assumed)
    stack_sky = float(np.sqrt(np.median(v[covered]))) if covered.any() else np.inf
    header["DEPTHGN"] = (round(float(2.5 * np.log10(sky[ref] / stack_sky)), 4), "[mag] depth gain over STACKREF")
    out = Frame(data=data.astype(np.float32), mask=mask, header=header, primary=tpl.primary.copy(),
                var=v.astype(np.float32))
    return out
