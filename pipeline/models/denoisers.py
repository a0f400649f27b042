"""The denoiser registry: ``denoise.models`` names and how to build each."""

from __future__ import annotations

from torch import nn

from pipeline.errors import ParamsError
from pipeline.models.dncnn import DnCNN
from pipeline.models.dncnn_spectral import DnCNNSpectral
from pipeline.models.dncnn_subspace import DnCNNSubspace

DENOISERS: dict[str, type[nn.Module]] = {
    cls.name: cls for cls in (DnCNNSubspace, DnCNNSpectral, DnCNN)
}


def build_denoiser(model: str = "dncnn", **config) -> nn.Module:
    """The untrained denoiser ``model`` (a key of :data:`DENOISERS`) with ``config``."""
    if model not in DENOISERS:
        raise ParamsError(f"unknown denoiser {model!r}; known: {', '.join(DENOISERS)}")
    return DENOISERS[model](**config)
