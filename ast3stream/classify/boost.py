"""Gradient-boosted trees in NumPy for the real/bogus combiner (no scikit-learn on the lent GPU).

Logistic loss, second-order (Newton) leaves and split gains as in XGBoost (Chen & Guestrin 2016,
eqs. 6-7): for a node with gradient sum ``G`` and hessian sum ``H`` the leaf value is
``-G / (H + l2)`` and a split's gain ``G_L^2/(H_L+l2) + G_R^2/(H_R+l2) - G^2/(H+l2)``; candidate
splits are the features' quantile edges (histogram boosting, Ke et al. 2017, LightGBM), trees
grow depth-first to ``depth``, each is added with shrinkage ``rate`` (Friedman 2001). A model is
a plain dict of lists (JSON in the weights file), evaluated by :func:`boost_margin`.
"""
from __future__ import annotations

import numpy as np


def _edges(X: np.ndarray, n_bins: int) -> list[np.ndarray]:
    qs = np.linspace(0, 1, n_bins + 1)[1:-1]
    return [np.unique(np.quantile(X[:, j], qs)) for j in range(X.shape[1])]


def fit_boost(X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, *, n_trees: int = 150,
              depth: int = 3, rate: float = 0.1, n_bins: int = 32, l2: float = 1.0,
              min_hessian: float = 1.0, seed: int = 0) -> dict:
    """Fit on features ``X`` (N, F) and labels ``y`` in {0, 1}; ``weight`` per sample (mean 1 after
    normalisation). Each tree sees a random 80 % of the samples (stochastic boosting, Friedman 2002)."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, float)
    w = w * len(w) / w.sum()
    rng = np.random.default_rng(seed)
    edges = _edges(X, n_bins)
    codes = np.column_stack([np.searchsorted(e, X[:, j], side="left") for j, e in enumerate(edges)])
    p1 = np.clip(np.average(y, weights=w), 1e-4, 1 - 1e-4)
    base = float(np.log(p1 / (1 - p1)))
    margin = np.full(len(y), base)
    trees = []
    for _ in range(n_trees):
        p = 1 / (1 + np.exp(-margin))
        g, h = w * (p - y), w * p * (1 - p)
        sub = rng.random(len(y)) < 0.8
        tree = dict(feature=[], threshold=[], left=[], right=[], value=[])

        def grow(idx, level):
            node = len(tree["feature"])
            for k in tree:
                tree[k].append(-1 if k in ("feature", "left", "right") else 0.0)
            G, H = g[idx].sum(), h[idx].sum()
            tree["value"][node] = float(-G / (H + l2))
            if level == depth or H < 2 * min_hessian:
                return node
            best = (0.0, -1, -1)
            for j, e in enumerate(edges):
                nb = len(e) + 1
                if nb < 2:
                    continue
                gl = np.cumsum(np.bincount(codes[idx, j], g[idx], nb))[:-1]
                hl = np.cumsum(np.bincount(codes[idx, j], h[idx], nb))[:-1]
                gr, hr = G - gl, H - hl
                gain = gl**2 / (hl + l2) + gr**2 / (hr + l2) - G**2 / (H + l2)
                gain[(hl < min_hessian) | (hr < min_hessian)] = 0
                b = int(np.argmax(gain))
                if gain[b] > best[0]:
                    best = (float(gain[b]), j, b)
            if best[1] < 0:
                return node
            j, b = best[1], best[2]
            go_left = codes[idx, j] <= b
            tree["feature"][node], tree["threshold"][node] = j, float(edges[j][b])
            tree["left"][node] = grow(idx[go_left], level + 1)
            tree["right"][node] = grow(idx[~go_left], level + 1)
            return node

        grow(np.flatnonzero(sub), 0)
        trees.append(tree)
        margin += rate * _tree_value(tree, X)
    return dict(base=base, rate=rate, trees=trees, n_features=X.shape[1], depth=depth, l2=l2)


def _tree_value(tree: dict, X: np.ndarray) -> np.ndarray:
    feat, thr = np.asarray(tree["feature"]), np.asarray(tree["threshold"])
    left, right, value = np.asarray(tree["left"]), np.asarray(tree["right"]), np.asarray(tree["value"])
    node = np.zeros(len(X), int)
    while True:
        inner = feat[node] >= 0
        if not inner.any():
            return value[node]
        n = node[inner]
        # x <= threshold goes left, the split rule of fit_boost's codes (searchsorted side="left")
        node[inner] = np.where(X[inner, feat[n]] <= thr[n], left[n], right[n])


def boost_margin(model: dict, X: np.ndarray) -> np.ndarray:
    """Log-odds of real for features ``X`` (N, F) under a :func:`fit_boost` model."""
    X = np.asarray(X, float)
    if X.ndim != 2 or X.shape[1] != model["n_features"]:
        raise ValueError(f"expected features (N, {model['n_features']}), got {X.shape}")
    out = np.full(len(X), model["base"])
    for tree in model["trees"]:
        out += model["rate"] * _tree_value(tree, X)
    return out
