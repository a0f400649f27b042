"""Denoiser throughput: training steps and whole-cube inference of every model of
``denoise.models``, in megapixels per second.

Training: band-pixels of the input patches per second (batch × patch² / step time) with Adam,
fp32 against bf16 autocast + channels-last (what the loop uses on CPUs with native bf16).
Inference: a synthetic cube of Indian Pines size (145×145×200, values in [0, 1]) denoised with
:func:`pipeline.evaluation.denoise.denoise_cube`, as `denoise_evaluate` and `robustness` do;
Mpx/s counts the cube's band-pixels (H·W·B / time), so the models compare on the same work
(``dncnn_subspace`` runs only its ``rank`` eigen-images through the network). Weights are random:
the time does not depend on them. Prints a table with the device, torch version and date.

    .venv/bin/python bench/denoise_throughput.py               # params.yaml's sizes
    .venv/bin/python bench/denoise_throughput.py --steps 3 --bands 40   # a quicker estimate
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np
import torch
from torch import nn

from pipeline.evaluation.denoise import denoise_cube
from pipeline.models import Shape, spec
from pipeline.params import load_params
from pipeline.training.common import autocast, cpu_bf16_supported, device_name
from pipeline.training.denoise_data import sample_patches

SHAPE = (145, 145, 200)


def _model(name: str, params, cube: np.ndarray, rank: int) -> nn.Module:
    """Denoiser ``name`` from the registry, fitted to (a subsample of) the cube."""
    model = spec(name, "denoising").build(
        Shape(bands=cube.shape[-1]), params.override({"denoise.rank": rank})
    )
    model.fit_to(cube[::4, ::4])
    return model


def train_step_seconds(net, x, noise, device, amp: bool, channels_last: bool, steps: int) -> float:
    """Median seconds of one Adam step on the batch ``x`` (one warm-up step first)."""
    net = net.to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=fmt)
    x = x.to(device).contiguous(memory_format=fmt)
    noise = noise.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with autocast(device, amp, cpu=True):
            pred = net.predict_noise(x)
        loss = nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    net.to(memory_format=torch.contiguous_format)
    return float(np.median(times[1:]))


def inference_seconds(model, cube, device, amp: bool) -> float:
    denoise_cube(model, cube[:16, :16], device=device, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    denoise_cube(model, cube, device=device, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per setting")
    p.add_argument("--bands", type=int, default=SHAPE[2], help="bands of the inference cube")
    p.add_argument("--rank", type=int, default=35, help="dncnn_subspace eigen-images")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    dp = params.denoise
    device = torch.device(args.device)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cube = rng.random((*SHAPE[:2], args.bands), dtype=np.float32)
    gen = torch.Generator().manual_seed(0)
    name_dev = device_name(device)
    if device.type == "cpu":
        name_dev = f"cpu ({torch.get_num_threads()} threads, native bf16: {cpu_bf16_supported()})"
    print(
        f"denoisers depth {dp['depth']}, {dp['channels']} channels, batch {dp['batch_size']} of "
        f"{dp['patch_size']}²; cube {SHAPE[0]}×{SHAPE[1]}×{args.bands}; {name_dev}; "
        f"torch {torch.__version__}; {platform.node()}; "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )
    header = f"{'model':<16} {'what':<28} {'seconds':>9} {'Mpx/s':>8}"
    print(header)
    print("-" * len(header))
    for name in dp["models"]:
        model = _model(name, params, cube, min(args.rank, args.bands))
        planes = model.training_planes(cube[:48, :48])
        x = sample_patches(
            torch.as_tensor(planes.planes),
            torch.as_tensor(planes.table),
            dp["batch_size"],
            dp["patch_size"],
            gen,
        )
        noise = torch.randn(x.shape[0], 1, *x.shape[2:], generator=gen) * 0.1
        px = x.shape[0] * x.shape[2] * x.shape[3] / 1e6
        for amp, cl in ((False, False), (True, True)):
            if amp and not (device.type == "cuda" or cpu_bf16_supported()):
                continue
            s = train_step_seconds(model.trainable_net, x, noise, device, amp, cl, args.steps)
            label = "train step " + ("bf16 + channels-last" if amp else "fp32")
            print(f"{name:<16} {label:<28} {s:>9.3f} {px / s:>8.3f}")
        for amp in (False, True):
            s = inference_seconds(model, cube, device, amp)
            label = f"whole cube {'bf16' if amp else 'fp32'}"
            print(f"{name:<16} {label:<28} {s:>9.2f} {cube.size / s / 1e6:>8.3f}")


if __name__ == "__main__":
    main()
