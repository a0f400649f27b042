"""DnCNN (Zhang, Zuo, Chen, Meng, Zhang, "Beyond a Gaussian Denoiser: Residual Learning of Deep
CNN for Image Denoising", IEEE TIP 26(7), 2017), laid out as SaoYan's DnCNN-PyTorch.

Conv+ReLU, then (Conv without bias + BatchNorm + ReLU) × (depth − 2), then Conv; all 3×3 with
padding 1, so the output has the input's size. The network predicts the noise and
:meth:`DnCNN.forward` returns ``x − noise`` (residual learning). A hyperspectral cube is denoised
one spectral band at a time as a grayscale image: input and output are (N, 1, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.errors import ParamsError

BN_WEIGHT_CLAMP = 0.025


class DnCNN(nn.Module):
    """Residual Gaussian denoiser; ``DnCNN(**model.config)`` rebuilds the same architecture."""

    name = "dncnn"

    def __init__(self, depth: int = 17, channels: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        for arg, value, minimum in (
            ("depth", depth, 3),
            ("channels", channels, 1),
            ("in_channels", in_channels, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ParamsError(f"dncnn: {arg} must be an integer >= {minimum}, got {value!r}")
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
        layers.append(nn.Conv2d(channels, in_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        self.config: dict[str, int] = {
            "depth": depth,
            "channels": channels,
            "in_channels": in_channels,
        }
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SaoYan's init: Kaiming-normal convs; small BatchNorm scales so training starts near x.

        BN weights ~ N(0, √(2/(9·C))) clipped to ±0.025, as in the reference MatConvNet code.
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

    def predict_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The noise estimate (N, C, H, W) of the noisy input ``x``."""
        return self.dncnn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The denoised image: input minus the predicted noise."""
        return x - self.predict_noise(x)
