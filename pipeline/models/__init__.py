"""The model registry: every model a stage can train, its task, and how to build it.

One entry per name (:data:`REGISTRY`): the task (``classification`` or ``denoising``), the
family (``cnn`` trained by the loop, ``classical`` fitted on pixels, ``denoiser``), the class and
one builder with one signature, ``spec.build(shape, params)``. Checkpoints store the model's
``config`` (its ``name`` and constructor arguments) and come back through :func:`rebuild`. What
differs between models is a method of the model, never a name or type test elsewhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.errors import ParamsError
from pipeline.models.blocks import SeparableConv2d, SqueezeExcite
from pipeline.models.classical import KernelSVM, RandomForest, fit_rf, fit_svm
from pipeline.models.dncnn import DnCNN
from pipeline.models.dncnn_spectral import DnCNNSpectral
from pipeline.models.dncnn_subspace import DnCNNSubspace
from pipeline.models.hybridsn import (
    HybridSN,
    HybridSN2D3D,
    HybridSNBase,
    HybridSNSE,
    HybridSNSeparable,
)

_NAMED_ARGS = ("bands", "patch_size", "n_classes")


@dataclass(frozen=True)
class Shape:
    """What a builder needs from the data: bands (PCA components or raw bands), classes and the
    patch side (classifiers)."""

    bands: int
    n_classes: int = 0
    patch_size: int = 1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    family: str
    cls: type[nn.Module]
    builder: Callable[[Shape, Any], nn.Module]
    summary: str
    fit: Callable[..., nn.Module] | None = None
    """Classical models: ``fit(features, labels, n_classes, groups=..., seed=...)`` returns the
    fitted module; None for models trained by the loop."""
    features: str = "pca"
    """What the model reads: the PCA-reduced cube (``pca``) or the full ``spectra``."""

    def build(self, shape: Shape, params: Any) -> nn.Module:
        """The untrained model for data of ``shape``, configured from ``params``."""
        return self.builder(shape, params)


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


_CNNS = (HybridSN, HybridSNSeparable, HybridSNSE, HybridSN2D3D)
MODELS: dict[str, type[nn.Module]] = {cls.name: cls for cls in _CNNS}
"""The HybridSN family, by name."""


def build_model(name: str, bands: int, patch_size: int, n_classes: int, **kw: object) -> nn.Module:
    """HybridSN-family model ``name`` for K=``bands``, P=``patch_size``, C=``n_classes``,
    Keras-initialised.

    ``kw`` are the model's own options (``dropout``; ``reduction`` for hybridsn_se;
    ``mid_channels`` for hybridsn_2d3d). Raises ParamsError for an unknown name or option and
    for sizes too small for the valid convolutions.
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


def _cnn(cls: type[nn.Module], summary: str) -> ModelSpec:
    def builder(shape: Shape, params: Any) -> nn.Module:
        return build_model(
            cls.name, shape.bands, shape.patch_size, shape.n_classes, dropout=params.train.dropout
        )

    return ModelSpec(cls.name, "classification", "cnn", cls, builder, summary)


def _denoiser(cls: type[nn.Module], summary: str, **extra: Callable) -> ModelSpec:
    def builder(shape: Shape, params: Any) -> nn.Module:
        dp = params.denoise
        options = {k: f(shape, dp) for k, f in extra.items()}
        return cls(depth=dp.depth, channels=dp.channels, **options)

    return ModelSpec(cls.name, "denoising", "denoiser", cls, builder, summary)


def _classical(cls: type[nn.Module], fit: Callable, summary: str) -> ModelSpec:
    def builder(shape: Shape, params: Any) -> nn.Module:
        raise ParamsError(f"{cls.name} is fitted on pixels (spec.fit), not built untrained")

    return ModelSpec(cls.name, "classification", "classical", cls, builder, summary, fit, "spectra")


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _cnn(HybridSN, "HybridSN (Roy et al., GRSL 2019): 3-D convs, then a 2-D conv"),
        _cnn(HybridSNSeparable, "HybridSN with a depthwise-separable 2-D conv"),
        _cnn(HybridSNSE, "HybridSN with squeeze-and-excitation on the folded maps"),
        _cnn(HybridSN2D3D, "the reversed order: a 2-D conv, then the 3-D convs"),
        _classical(
            KernelSVM,
            lambda x, y, n, *, groups=None, seed=0: fit_svm(
                x, y, n, groups=groups, seed=seed, n_jobs=torch.get_num_threads()
            ),
            "RBF SVM on the pixel's standardised spectrum; C and γ by inner CV over spatial blocks",
        ),
        _classical(
            RandomForest,
            lambda x, y, n, *, groups=None, seed=0: fit_rf(
                x, y, n, seed=seed, n_jobs=torch.get_num_threads()
            ),
            "random forest (200 trees) on the pixel's spectrum",
        ),
        _denoiser(
            DnCNNSubspace,
            "DnCNN on the eigen-images of the spectral subspace (FastHyDe idea)",
            bands=lambda s, dp: s.bands,
            rank=lambda s, dp: dp.rank or 0,
        ),
        _denoiser(
            DnCNNSpectral,
            "DnCNN on a band and its neighbours (HSID-CNN idea)",
            k=lambda s, dp: dp.spectral_k,
        ),
        _denoiser(DnCNN, "DnCNN (Zhang et al., TIP 2017), band by band"),
    )
}
CLASSIFIERS = {n: s for n, s in REGISTRY.items() if s.task == "classification"}
DENOISERS = {n: s for n, s in REGISTRY.items() if s.task == "denoising"}


def spec(name: str, task: str | None = None) -> ModelSpec:
    """The registry entry of ``name`` (of ``task`` if given); ParamsError naming the known ones."""
    pool = REGISTRY if task is None else {n: s for n, s in REGISTRY.items() if s.task == task}
    if name not in pool:
        what = f"{task} model" if task else "model"
        raise ParamsError(f"unknown {what} {name!r}; known: {', '.join(pool)}")
    return pool[name]


def rebuild(config: dict) -> nn.Module:
    """An untrained module of the architecture a checkpoint's ``model_config`` describes."""
    config = dict(config)
    name = config.pop("name", None)
    return spec(str(name)).cls(**config)


__all__ = [
    "CLASSIFIERS",
    "DENOISERS",
    "MODELS",
    "REGISTRY",
    "HybridSN",
    "HybridSN2D3D",
    "HybridSNBase",
    "HybridSNSE",
    "HybridSNSeparable",
    "ModelSpec",
    "SeparableConv2d",
    "Shape",
    "SqueezeExcite",
    "build_model",
    "count_parameters",
    "init_keras_",
    "rebuild",
    "spec",
]
