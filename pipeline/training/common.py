"""Device choice, seeding and autocast shared by the classifier and denoiser loops."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from pipeline.errors import ParamsError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("'train.device' = 'cuda' but no CUDA GPU is available")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def seed_everything(seed: int, *, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for batch order.

    On CPU, fixed seed → identical run. On CUDA, cuDNN may pick nondeterministic kernels;
    we accept that for speed and say so in the README.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - for third-party code on the legacy global RNG
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Filling every new tensor with NaN guards nothing here and cost 13 % of a CPU epoch.
        torch.utils.deterministic.fill_uninitialized_memory = False
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def cpu_bf16_supported() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX) that oneDNN uses."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, enabled: bool, *, cpu: bool = False):
    """bf16 autocast on CUDA (no loss scaling needed), and on CPU too when ``cpu`` is set and
    the CPU has native bf16; a no-op elsewhere. Weights and optimiser state stay fp32."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and cpu and device.type == "cpu" and cpu_bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
