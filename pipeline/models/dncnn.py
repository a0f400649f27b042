"""DnCNN (Zhang, Zuo, Chen, Meng, Zhang, "Beyond a Gaussian Denoiser: Residual Learning of Deep
CNN for Image Denoising", IEEE TIP 26(7), 2017), laid out as SaoYan's DnCNN-PyTorch.

Conv+ReLU, then (Conv without bias + BatchNorm + ReLU) × (depth − 2), then Conv; all 3×3 with
padding 1, so the output has the input's size. The network predicts the noise and
:meth:`DnCNN.forward` returns ``x − noise`` (residual learning). As ``dncnn`` a hyperspectral cube
is denoised one spectral band at a time as a grayscale image: input and output are (N, 1, H, W).
The spectral variants (:mod:`pipeline.models.dncnn_subspace`, :mod:`pipeline.models.dncnn_spectral`)
reuse this network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.errors import ParamsError

BN_WEIGHT_CLAMP = 0.025


@dataclass
class Planes:
    """What a denoiser trains on: ``planes`` (C, H, W) clean images, and ``table`` (U, c): the
    planes stacked as the input channels of each training unit; noise is predicted for column
    0 (the centre)."""

    planes: np.ndarray
    table: np.ndarray


RunPlanes = Callable[[nn.Module, torch.Tensor, np.ndarray], torch.Tensor]
"""``run(net, planes (C, H, W), table (U, c)) -> (U, H, W)``: a network over every row of
``table``, in batches, on the caller's device (see :func:`pipeline.evaluation.denoise.denoise_cube`)."""


def check_int(model: str, **values: tuple[int, int]) -> None:
    """ParamsError unless each ``name=(value, minimum)`` is an integer >= its minimum."""
    for arg, (value, minimum) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ParamsError(f"{model}: {arg} must be an integer >= {minimum}, got {value!r}")


class DnCNN(nn.Module):
    """Residual Gaussian denoiser; ``DnCNN(**model.config)`` rebuilds the same architecture.

    ``in_channels`` input planes, ``out_channels`` predicted noise planes (default: as many as the
    input); :meth:`forward` subtracts the noise from the first ``out_channels`` input planes.
    """

    name = "dncnn"

    def __init__(
        self,
        *,
        depth: int,
        channels: int,
        in_channels: int = 1,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        check_int(
            "dncnn",
            depth=(depth, 3),
            channels=(channels, 1),
            in_channels=(in_channels, 1),
            out_channels=(out_channels, 1),
        )
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        self.config: dict[str, object] = {
            "name": self.name,
            "depth": depth,
            "channels": channels,
            "in_channels": in_channels,
        }
        if out_channels != in_channels:
            self.config["out_channels"] = out_channels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions with zero biases; BatchNorm scales drawn from
        N(0, 2/(9·C)) and then clamped to [−0.025, 0.025], BatchNorm shifts zero.

        SaoYan's DnCNN-PyTorch draws the BN scales from N(0, 2/(9·64)) and clamps them to
        ±0.025 (``weights_init_kaiming``); the clamp keeps each residual block small, so an
        untrained network predicts almost no noise and its output starts close to its input.
        (The original MatConvNet code does the opposite: it pushes scales smaller than 0.025 out
        to ±0.025.)
        """
        std = math.sqrt(2.0 / (9 * self.config["channels"]))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                with torch.no_grad():
                    module.weight.normal_(0.0, std).clamp_(-BN_WEIGHT_CLAMP, BN_WEIGHT_CLAMP)
                nn.init.zeros_(module.bias)

    @property
    def receptive_field(self) -> int:
        return 2 * self.config["depth"] + 1

    @property
    def trainable_net(self) -> nn.Module:
        """The convolutional network the training loop fits (here the whole model)."""
        return self

    def fit_to(self, clean01: np.ndarray) -> None:
        """Fit what the model derives from the clean training rows (H, W, B) before training."""

    def plane_table(self, bands: int) -> np.ndarray:
        """(U, c) input bands of each output band: each band alone."""
        return np.arange(bands)[:, None]

    def training_planes(self, clean01: np.ndarray) -> Planes:
        """The clean planes and unit table the loop samples training patches from."""
        bands = np.ascontiguousarray(np.moveaxis(np.asarray(clean01, np.float32), -1, 0))
        return Planes(bands, self.plane_table(len(bands)))

    def denoise_array(self, cube01: np.ndarray, run: RunPlanes) -> np.ndarray:
        """Denoise an (H, W, B) cube in the [0, 1] domain, the planes going through ``run``."""
        planes = torch.from_numpy(np.ascontiguousarray(np.moveaxis(cube01, -1, 0)))
        out = run(self, planes, self.plane_table(cube01.shape[-1]))
        return np.moveaxis(out.numpy(), 0, -1)

    def predict_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The noise estimate (N, out_channels, H, W) of the noisy input ``x``."""
        return self.dncnn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The denoised image: the first ``out_channels`` input planes minus the noise."""
        noise = self.predict_noise(x)
        return x[:, : noise.shape[1]] - noise
