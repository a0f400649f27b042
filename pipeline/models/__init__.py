"""Classification models (HybridSN family), their registry and Keras-style initialisation."""

from __future__ import annotations

import inspect

from torch import nn

from pipeline.errors import ParamsError
from pipeline.models.blocks import SeparableConv2d, SqueezeExcite
from pipeline.models.hybridsn import (
    HybridSN,
    HybridSN2D3D,
    HybridSNBase,
    HybridSNSE,
    HybridSNSeparable,
)

MODELS: dict[str, type[nn.Module]] = {
    cls.name: cls for cls in (HybridSN, HybridSNSeparable, HybridSNSE, HybridSN2D3D)
}

_NAMED_ARGS = ("bands", "patch_size", "n_classes")


def init_keras_(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` in place as Keras does by default, and return it.

    Glorot-uniform weights (Glorot & Bengio, AISTATS 2010) and zero biases for every Conv and
    Linear layer, BatchNorm weight 1 and bias 0. HybridSN was published with Keras; PyTorch's
    default (Kaiming-uniform with a=√5) sometimes left training stuck at the majority class.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(name: str, bands: int, patch_size: int, n_classes: int, **kw: object) -> nn.Module:
    """Build model ``name`` for K=``bands``, P=``patch_size``, C=``n_classes``, Keras-initialised.

    ``kw`` are the model's own options (``dropout``; ``reduction`` for hybridsn_se;
    ``mid_channels`` for hybridsn_2d3d). ``build_model(**model.config)`` rebuilds the same
    architecture, e.g. before loading a checkpoint's state_dict. Raises ParamsError for an
    unknown name or option and for sizes too small for the valid convolutions.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ParamsError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    options = [p for p in inspect.signature(cls).parameters if p not in _NAMED_ARGS]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise ParamsError(
            f"model {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(options)}"
        )
    return init_keras_(cls(bands, patch_size, n_classes, **kw))


__all__ = [
    "MODELS",
    "HybridSN",
    "HybridSN2D3D",
    "HybridSNBase",
    "HybridSNSE",
    "HybridSNSeparable",
    "SeparableConv2d",
    "SqueezeExcite",
    "build_model",
    "count_parameters",
    "init_keras_",
]
