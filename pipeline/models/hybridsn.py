"""HybridSN (Roy et al., "HybridSN: Exploring 3-D–2-D CNN Feature Hierarchy for Hyperspectral
Image Classification", IEEE GRSL 2019) and three variants.

Every model takes a batch of patches (N, 1, K, P, P) — K PCA bands as the depth axis, P×P pixels,
P odd — and returns logits (N, C). All layer sizes are derived from (K, P, C); nothing is
hard-coded. Each model is split into a translation-equivariant conv trunk (:meth:`features`) and
a fully-connected head, so in eval mode the head can also be run as convolutions over a whole
padded scene (:meth:`forward_dense`), giving every pixel's patch logits in one pass.

For training, each model is also split at its last translation-equivariant layer into a shared
part (:meth:`shared_features`) and a per-pixel part (:meth:`pixel_head`): :meth:`forward_tile`
runs the shared part once over a tile's padded window and the per-pixel part on each pixel's
window of those maps, which equals :meth:`forward` on the pixels' patches (BatchNorm included,
see :class:`~pipeline.models.blocks.PositionBatchNorm2d`) at a fraction of the cost, because
neighbouring patches overlap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pipeline.errors import ParamsError
from pipeline.models.blocks import (
    CONV3D_MIN_DEPTH,
    CONV3D_SPEC,
    PositionBatchNorm2d,
    SeparableConv2d,
    SqueezeExcite,
    conv3d_trunk,
    conv3d_trunk_depth,
    fold_spectral,
    tile_positions,
)

SPATIAL_CONVS = 4
"""Valid 3×3 convs in every trunk (three 3-D and one 2-D); each trims one pixel per side."""

MIN_PATCH_SIZE = 1 + 2 * SPATIAL_CONVS
HEAD_WIDTHS = (256, 128)


def _check_int(model: str, arg: str, value: object, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"{model}: {arg} must be an integer, got {value!r}")
    if value < minimum:
        reason = f" ({why})" if why else ""
        raise ParamsError(f"{model}: {arg}={value} is too small; need {arg} >= {minimum}{reason}")
    return value


class HybridSNBase(nn.Module):
    """Shared validation, FC head and patch/dense forward passes of the HybridSN family.

    Subclasses build their trunk in ``__init__``, call :meth:`_build_head` with the trunk's
    output (channels, size) and implement :meth:`features`.
    """

    name = "hybridsn_base"

    def __init__(
        self, bands: int, patch_size: int, n_classes: int, dropout: float, **extra: object
    ) -> None:
        super().__init__()
        _check_int(self.name, "bands", bands, 1)
        _check_int(
            self.name,
            "patch_size",
            patch_size,
            MIN_PATCH_SIZE,
            f"{SPATIAL_CONVS} valid 3×3 convolutions",
        )
        if patch_size % 2 == 0:
            raise ParamsError(
                f"{self.name}: patch_size={patch_size} must be odd so the patch has a centre pixel"
            )
        _check_int(self.name, "n_classes", n_classes, 2)
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not 0 <= dropout < 1
        ):
            raise ParamsError(f"{self.name}: dropout must be a number in [0, 1), got {dropout!r}")
        self.bands = bands
        self.patch_size = patch_size
        self.n_classes = n_classes
        self.config: dict[str, object] = {
            "name": self.name,
            "bands": bands,
            "patch_size": patch_size,
            "n_classes": n_classes,
            "dropout": float(dropout),
            **extra,
        }
        self._dropout = float(dropout)

    def _build_head(self, channels: int, size: int) -> None:
        """FC 256 + ReLU + dropout -> FC 128 + ReLU + dropout -> FC C on the flattened maps."""
        self.feature_shape = (channels, size, size)
        self.fc1 = nn.Linear(channels * size * size, HEAD_WIDTHS[0])
        self.drop1 = nn.Dropout(self._dropout)
        self.fc2 = nn.Linear(HEAD_WIDTHS[0], HEAD_WIDTHS[1])
        self.drop2 = nn.Dropout(self._dropout)
        self.fc3 = nn.Linear(HEAD_WIDTHS[1], self.n_classes)

    @property
    def supports_dense(self) -> bool:
        """Whether :meth:`forward_dense` is exact: the trunk must be translation-equivariant."""
        return True

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Conv trunk: (N, 1, K, h, w) -> (N, F, h - 8, w - 8) 2-D feature maps."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor, what: str) -> None:
        if x.ndim != 5 or x.shape[1] != 1 or x.shape[2] != self.bands:
            raise ValueError(
                f"{self.name}: {what} must have shape (N, 1, {self.bands}, H, W), "
                f"got {tuple(x.shape)}"
            )

    shared_shrink = 2 * SPATIAL_CONVS
    """Pixels per side that :meth:`shared_features` trims (valid convs): P - this is the window."""

    def shared_features(self, x: torch.Tensor) -> torch.Tensor:
        """The translation-equivariant part that a tile pass shares between pixels."""
        return self.features(x)

    def pixel_head(self, windows: torch.Tensor) -> torch.Tensor:
        """Per-pixel part: shared-feature windows (N, F, w, w) -> logits (N, C)."""
        x = rearrange(windows, "b c h w -> b (c h w)")
        x = self.drop1(F.relu(self.fc1(x)))
        x = self.drop2(F.relu(self.fc2(x)))
        return self.fc3(x)

    def _output_size(self, padded: torch.Tensor, what: str) -> tuple[int, int]:
        """Pixels (h, w) whose P×P patches lie inside a padded window; at least one each way."""
        self._check_input(padded, what)
        h, w = (int(n) - self.patch_size + 1 for n in padded.shape[3:])
        if h < 1 or w < 1:
            raise ValueError(
                f"{self.name}: {what} {tuple(padded.shape[3:])} is smaller than "
                f"one {self.patch_size}×{self.patch_size} patch"
            )
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patches (N, 1, K, P, P) -> logits (N, C)."""
        self._check_input(x, "input")
        if tuple(x.shape[3:]) != (self.patch_size, self.patch_size):
            raise ValueError(
                f"{self.name}: patches must be {self.patch_size}×{self.patch_size}, "
                f"got {tuple(x.shape[3:])}"
            )
        return self.pixel_head(self.shared_features(x))

    def forward_tile(
        self,
        windows: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        tiles: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of pixels of tiles from a single pass of the shared part over their windows.

        ``windows`` (B, 1, K, h + P - 1, w + P - 1) are the padded cube around B tiles of h×w
        pixels; ``rows``/``cols`` are tile-local coordinates (0 ≤ row < h) of the pixels to
        classify and ``tiles`` their tile (0 ≤ tile < B; all 0 when omitted). The result equals
        :meth:`forward` on those pixels' P×P patches, in train mode too (dropout stays per
        pixel; BatchNorm weights each position as the patch path would).
        """
        b = windows.shape[0]
        h, w = self._output_size(windows, "tile window")
        if tiles is None:
            tiles = torch.zeros_like(rows)
        mask = torch.zeros(b, h, w, device=windows.device)
        ones = torch.ones_like(rows, dtype=mask.dtype)
        mask.index_put_((tiles, rows, cols), ones, accumulate=True)
        with tile_positions(self, mask):
            maps = self.shared_features(windows)
        return self.pixel_head(self.feature_windows(maps, rows, cols, tiles))

    def feature_windows(
        self, maps: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, tiles: torch.Tensor
    ) -> torch.Tensor:
        """Each pixel's window (N, F, w, w) of :meth:`shared_features` maps (B, F, ·, ·)."""
        k = self.patch_size - self.shared_shrink
        map_h, map_w = maps.shape[2], maps.shape[3]
        offsets = torch.arange(k, device=maps.device)
        offsets = (offsets[:, None] * map_w + offsets[None, :]).reshape(-1)
        index = ((tiles * map_h + rows) * map_w + cols)[:, None] + offsets[None, :]
        flat = rearrange(maps, "b c h w -> c (b h w)")
        windows = flat[:, index]  # a flat gather: its backward is a cheap scatter-add
        return rearrange(windows, "c n (h w) -> n c h w", h=k)

    def forward_dense(self, padded: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
        """Logits of every pixel of a scene in one fully-convolutional pass (eval mode only).

        ``padded`` is the scene (N, 1, K, H + P - 1, W + P - 1) padded by P//2 on each side;
        the result (N, C, H, W) equals :meth:`forward` on the P×P patch around each pixel.
        FC1 becomes a (P-8)×(P-8) convolution (its weight reshaped in the (channel, h, w) order
        of the flatten), FC2 and FC3 per-pixel linear maps. ``chunk_rows`` bounds memory by
        processing that many output rows at a time (with P-1 rows of overlap); the result is
        the same. Run under ``torch.inference_mode()`` to avoid keeping activations.
        """
        if not self.supports_dense:
            raise NotImplementedError(
                f"{self.name} does not support dense inference; classify patches with forward()"
            )
        if self.training:
            raise RuntimeError(
                f"{self.name}: forward_dense matches the patch path only in eval mode "
                "(dropout off, BatchNorm running statistics); call model.eval() first"
            )
        out_h, out_w = self._output_size(padded, "padded scene")
        if chunk_rows is None or chunk_rows >= out_h:
            return self._dense(padded)
        if chunk_rows < 1:
            raise ValueError(f"{self.name}: chunk_rows must be >= 1, got {chunk_rows}")
        halo = self.patch_size - 1
        chunks = [
            self._dense(padded[:, :, :, r : min(r + chunk_rows, out_h) + halo])
            for r in range(0, out_h, chunk_rows)
        ]
        return torch.cat(chunks, dim=2)

    def _dense(self, padded: torch.Tensor) -> torch.Tensor:
        channels, size, _ = self.feature_shape
        kernel = rearrange(self.fc1.weight, "o (c h w) -> o c h w", c=channels, h=size, w=size)
        x = F.relu(F.conv2d(self.features(padded), kernel, self.fc1.bias))
        x = rearrange(x, "b c h w -> b h w c")
        x = F.relu(self.fc2(x))
        return rearrange(self.fc3(x), "b h w c -> b c h w")


def _conv3d_trunk(model: str, depth: int, arg: str) -> tuple[nn.Sequential, int]:
    """HybridSN's 3-D trunk for ``depth`` input bands and its folded channel count."""
    _check_int(model, arg, depth, CONV3D_MIN_DEPTH, "spectral kernels 7, 5, 3 with valid padding")
    return conv3d_trunk(), CONV3D_SPEC[-1][0] * conv3d_trunk_depth(depth)


class HybridSN(HybridSNBase):
    """HybridSN as published: 3-D convs 8@7×3×3, 16@5×3×3, 32@3×3×3 -> fold -> 2-D conv 64@3×3.

    Kernels are (spectral, h, w), valid padding, ReLU after each. With K=30, P=25, C=16 it has
    the paper's 5,122,176 trainable parameters (Table I). Subclasses change the 2-D stage
    through :meth:`_make_conv2d`.
    """

    name = "hybridsn"

    def __init__(self, bands: int, patch_size: int, n_classes: int, dropout: float) -> None:
        super().__init__(bands, patch_size, n_classes, dropout)
        self.conv3d, self.folded_channels = _conv3d_trunk(self.name, bands, "bands")
        self.conv2d = self._make_conv2d(self.folded_channels)
        self._build_head(64, patch_size - 2 * SPATIAL_CONVS)

    def _make_conv2d(self, folded: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(folded, 64, 3), nn.ReLU(inplace=True))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(fold_spectral(self.conv3d(x)))


class HybridSNSeparable(HybridSN):
    """HybridSN with the 2-D conv made depthwise-separable (:class:`SeparableConv2d`).

    The 3×3×576×64 conv (331,840 parameters at K=30) becomes a depthwise 3×3 and a pointwise
    1×1 conv, each followed by BN + ReLU. In eval mode BN is a per-channel affine map, so the
    trunk stays translation-equivariant and dense inference is exact.
    """

    name = "hybridsn_dsc"

    def _make_conv2d(self, folded: int) -> nn.Module:
        return SeparableConv2d(folded, 64, 3)


class HybridSNSE(HybridSN):
    """HybridSN with squeeze-and-excitation (Hu et al., CVPR 2018) on the folded maps.

    SE sits after the 3-D convs are folded into 2-D channels and before the 2-D conv: each of
    the 32·(K-12) channels is one 3-D filter at one spectral depth, so the gates re-weight
    band–feature combinations, learning which matter for the patch. SE's global pooling makes
    each output depend on the whole patch, so there is no exact dense inference.
    """

    name = "hybridsn_se"

    def __init__(
        self,
        bands: int,
        patch_size: int,
        n_classes: int,
        dropout: float,
        reduction: int = 16,
    ) -> None:
        _check_int(self.name, "reduction", reduction, 1)
        super().__init__(bands, patch_size, n_classes, dropout)
        self.config["reduction"] = reduction
        self.se = SqueezeExcite(self.folded_channels, reduction)

    shared_shrink = 2 * (SPATIAL_CONVS - 1)

    @property
    def supports_dense(self) -> bool:
        return False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.se(fold_spectral(self.conv3d(x))))

    def shared_features(self, x: torch.Tensor) -> torch.Tensor:
        """Up to the folded 3-D maps: SE's pooling over the window is not equivariant."""
        return fold_spectral(self.conv3d(x))

    def pixel_head(self, windows: torch.Tensor) -> torch.Tensor:
        return super().pixel_head(self.conv2d(self.se(windows)))


class HybridSN2D3D(HybridSNBase):
    """The reversed hierarchy: a 2-D conv first, then HybridSN's 3-D convs on its feature maps.

    A 3×3 Conv2d (K -> ``mid_channels``, valid) + BN + ReLU mixes the PCA bands spatially; its
    ``mid_channels`` maps are then read as a spectral axis (N, 1, mid_channels, h, w) by the
    three 3-D convs, whose output is folded, flattened and fed to the same FC head. It tests
    whether HybridSN's 3-D-then-2-D order matters. Any K works; ``mid_channels`` must be at
    least 13 for the valid 3-D convs. The default 14 leaves spectral depth 2, i.e. 32·2 = 64
    folded maps of (P-8)×(P-8) — the shape HybridSN's head sees, so the head (and the total,
    ~4.8M at K=30, P=25, C=16) stays comparable; each extra map adds 32·(P-8)²·256 FC1
    weights (2.4M at P=25). The trunk is translation-equivariant, so dense inference is exact.
    """

    name = "hybridsn_2d3d"

    def __init__(
        self,
        bands: int,
        patch_size: int,
        n_classes: int,
        dropout: float,
        mid_channels: int = 14,
    ) -> None:
        super().__init__(bands, patch_size, n_classes, dropout, mid_channels=mid_channels)
        self.conv3d, folded = _conv3d_trunk(self.name, mid_channels, "mid_channels")
        self.conv2d = nn.Sequential(
            nn.Conv2d(bands, mid_channels, 3, bias=False),
            PositionBatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
        )
        self._build_head(folded, patch_size - 2 * SPATIAL_CONVS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2d(rearrange(x, "b 1 k h w -> b k h w"))
        return fold_spectral(self.conv3d(rearrange(x, "b c h w -> b 1 c h w")))
