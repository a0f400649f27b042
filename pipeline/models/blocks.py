"""Layer blocks of the HybridSN family.

The 3-D spectral–spatial trunk of HybridSN (Roy et al., IEEE GRSL 2019), a MobileNet-style
depthwise-separable 2-D convolution (Howard et al., arXiv:1704.04861, 2017) and
squeeze-and-excitation channel attention (Hu et al., CVPR 2018).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

CONV3D_SPEC: tuple[tuple[int, int], ...] = ((8, 7), (16, 5), (32, 3))
"""(filters, spectral kernel) of HybridSN's three 3-D convolutions; every spatial kernel is 3×3."""

CONV3D_MIN_DEPTH = 1 + sum(depth - 1 for _, depth in CONV3D_SPEC)
"""Smallest spectral depth the valid 3-D convolutions accept (13)."""


def conv3d_trunk(in_channels: int = 1) -> nn.Sequential:
    """HybridSN's 3-D convolutions, (spectral, h, w) kernels, valid padding, ReLU after each."""
    layers: list[nn.Module] = []
    channels = in_channels
    for filters, depth in CONV3D_SPEC:
        layers += [nn.Conv3d(channels, filters, (depth, 3, 3)), nn.ReLU(inplace=True)]
        channels = filters
    return nn.Sequential(*layers)


def conv3d_trunk_depth(depth: int) -> int:
    """Spectral depth left after :func:`conv3d_trunk` on an input of ``depth`` bands."""
    return depth - (CONV3D_MIN_DEPTH - 1)


def fold_spectral(x: torch.Tensor) -> torch.Tensor:
    """Fold the spectral axis into channels, (N, C, D, H, W) -> (N, C·D, H, W), as HybridSN does."""
    return rearrange(x, "b c d h w -> b (c d) h w")


class PositionBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in tile training, weights each map position like the patch path does.

    In patch training a batch of N patches gives BN the N·k·k positions of their k×k windows at
    that layer, overlaps counted once per patch. A tile pass sees each position once, so its
    plain statistics would differ. With a tile mask set (:func:`tile_positions`), each position
    is weighted by how many selected pixels' windows cover it, which gives exactly the patch
    path's batch mean, variance and running-average update. Without a mask it is plain BN.
    State dicts are those of ``nn.BatchNorm2d``.
    """

    tile_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.tile_mask is None:
            return super().forward(x)
        mask = self.tile_mask.to(x.dtype)
        kh, kw = x.shape[2] - mask.shape[1] + 1, x.shape[3] - mask.shape[2] + 1
        ones = torch.ones(1, 1, kh, kw, dtype=x.dtype, device=x.device)
        count = F.conv2d(mask[:, None], ones, padding=(kh - 1, kw - 1))[:, 0]
        n = count.sum()
        mean = torch.einsum("bchw,bhw->c", x, count) / n
        centred = x - mean[None, :, None, None]
        var = torch.einsum("bchw,bhw->c", centred * centred, count) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - m).add_(m * unbiased)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


@contextlib.contextmanager
def tile_positions(model: nn.Module, mask: torch.Tensor) -> Iterator[None]:
    """Within the block, every :class:`PositionBatchNorm2d` of ``model`` weights by ``mask``.

    ``mask`` (B, h, w) counts the pixels trained in each of the B tiles, on their output grids.
    """
    norms = [m for m in model.modules() if isinstance(m, PositionBatchNorm2d)]
    for m in norms:
        m.tile_mask = mask
    try:
        yield
    finally:
        for m in norms:
            m.tile_mask = None


class SeparableConv2d(nn.Module):
    """Depthwise k×k conv + BN + ReLU, then pointwise 1×1 conv + BN + ReLU (MobileNet, 2017).

    Replaces HybridSN's dense 3×3 conv over the folded 576 channels: 9·C + C·C_out weights
    instead of 9·C·C_out. The convs carry no bias because BN follows each. Valid padding, so
    it shrinks the maps by ``kernel_size - 1`` like the conv it replaces.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, groups=in_channels, bias=False
        )
        self.bn1 = PositionBatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = PositionBatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.depthwise(x)))
        return self.relu(self.bn2(self.pointwise(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al., CVPR 2018).

    Global average pooling ("squeeze"), a bottleneck MLP C -> C/r -> C with ReLU and a sigmoid
    ("excitation"), then each channel is rescaled by its gate. The pooling spans the whole map,
    so the output at a pixel depends on the whole input window.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = reduce(x, "b c h w -> b c", "mean")
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(gate))))
        return x * rearrange(gate, "b c -> b c 1 1")
