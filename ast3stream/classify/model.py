"""Network definitions: the rotation-invariant real/bogus ResNet-18 and the cloud ResNet-18.

Real/bogus (seed paper, sec. 2.4 and Table 1): a 4-channel stamp (difference, template,
science, SNR) is rotated by 0, 90, 180 and 270 degrees; each rotation goes through the
*same* ResNet-18 (BasicBlock residual units, He et al. 2016, with h-swish activations,
Howard et al. 2019); the four feature vectors are concatenated and classified by three
linear layers (two h-swish, dropout 0.5) into two classes.

Exact invariance. Rotating the input by 90 degrees cyclically permutes the four feature
vectors ``(f0, f1, f2, f3) -> (f1, f2, f3, f0)``, so a head applied to one concatenation is
*not* invariant. We apply the head to all four cyclic orderings and average the logits:
``logits(x) = 1/4 sum_k head([f_k, f_k+1, f_k+2, f_k+3])`` (indices mod 4), which is
exactly invariant to 90-degree rotations of the input (up to float rounding).
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.Hardswish()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet18Features(nn.Module):
    """ResNet-18 trunk: stem, 4 stages of 2 BasicBlocks (widths w, 2w, 4w, 8w), global average pool.

    ``stem_kernel``/``stem_stride`` set the first convolution (3/1 for the 31x31 QIP stamps,
    4/3 for the 91x91 DIP stamps, 7/1 for the cloud thumbnails); ``stem_pool`` > 1 adds a
    max-pool of that size and stride after the stem (cloud thumbnails: 4, 256 -> 64 px).
    """

    def __init__(self, in_ch: int, width: int = 64, stem_kernel: int = 3, stem_stride: int = 1,
                 stem_pool: int = 1):
        super().__init__()
        pad = (stem_kernel - 1) // 2 if stem_stride == 1 else 0
        stem = [nn.Conv2d(in_ch, width, stem_kernel, stem_stride, pad, bias=False),
                nn.BatchNorm2d(width), nn.Hardswish()]
        if stem_pool > 1:
            stem.append(nn.MaxPool2d(stem_pool, stem_pool))
        self.stem = nn.Sequential(*stem)
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.n_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(self.stem(x))).flatten(1)


def _head(n_in: int, hidden: tuple[int, int], dropout: float, n_out: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden[0]), nn.Hardswish(), nn.Dropout(dropout),
        nn.Linear(hidden[0], hidden[1]), nn.Hardswish(), nn.Dropout(dropout),
        nn.Linear(hidden[1], n_out),
    )


LANE_STEMS = {"qip": (3, 1), "dip": (4, 3)}  #: first-layer (kernel, stride) on raw 31/91 px stamps, seed Table 1


class _RotationInvariant(nn.Module):
    """``features`` applied to the 4 rotations, ``head`` to the 4 cyclic orders, logits averaged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        rots = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        f = self.features(rots).view(4, n, -1)                      # f[k] = features of rot^k(x)
        cyclic = torch.cat([torch.cat([f[(k + j) % 4] for j in range(4)], dim=1) for k in range(4)])
        return self.head(cyclic).view(4, n, -1).mean(0)


class RotationInvariantResNet(_RotationInvariant):
    """Real/bogus network; ``forward`` returns 2-class logits (index 1 = real). ``stem`` (kernel,
    stride) defaults to the lane's (seed Table 1); on the PSF-sampled 32 px stamps of
    :mod:`.stamps` both lanes use (3, 1)."""

    def __init__(self, lane: str = "qip", width: int = 64, in_ch: int = 4,
                 hidden: tuple[int, int] = (512, 128), dropout: float = 0.5, stem: tuple[int, int] | None = None):
        super().__init__()
        kernel, stride = stem or LANE_STEMS[lane]
        self.config = dict(lane=lane, width=width, in_ch=in_ch, hidden=list(hidden), dropout=dropout,
                           stem=[kernel, stride])
        self.features = ResNet18Features(in_ch, width, kernel, stride)
        self.head = _head(4 * self.features.n_features, hidden, dropout)


class RotationInvariantBraai(nn.Module):
    """The smaller alternative, braai-like (Duev et al. 2019): four 3x3 conv layers (widths w, 2w,
    2w, 2w; batch norm, h-swish) with 2x2 max-pooling after the first two, global average pool,
    a two-layer head. Exactly rotation-invariant by averaging the logits of the four 90-degree
    rotations in evaluation mode; in training mode each batch sees one random rotation (4x
    cheaper on a CPU, and an unbiased draw of the same average)."""

    def __init__(self, lane: str = "qip", width: int = 16, in_ch: int = 4, hidden: int = 32,
                 dropout: float = 0.3):
        super().__init__()
        self.config = dict(lane=lane, width=width, in_ch=in_ch, hidden=hidden, dropout=dropout)

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.Hardswish()]

        w = width
        self.features = nn.Sequential(*conv(in_ch, w), nn.MaxPool2d(2), *conv(w, 2 * w), nn.MaxPool2d(2),
                                      *conv(2 * w, 2 * w), *conv(2 * w, 2 * w), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.head = nn.Sequential(nn.Linear(2 * w, hidden), nn.Hardswish(), nn.Dropout(dropout),
                                  nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            k = int(torch.randint(4, (1,)))
            return self.head(self.features(torch.rot90(x, k, dims=(2, 3))))
        n = x.shape[0]
        rots = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        return self.head(self.features(rots)).view(4, n, -1).mean(0)


class CloudResNet(nn.Module):
    """Cloud classifier: ResNet-18 with a 1-channel 7x7 stride-1 first layer on 256x256 thumbnails.

    A 4x4 max-pool after the stem (256 -> 64 px) keeps CPU inference at ~0.1 s per thumbnail.
    """

    def __init__(self, width: int = 32, stem_pool: int = 4, dropout: float = 0.5):
        super().__init__()
        self.config = dict(width=width, stem_pool=stem_pool, dropout=dropout)
        self.features = ResNet18Features(1, width, 7, 1, stem_pool)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.features.n_features, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
