"""The one patch-inference loop: exact fp32 logits of the asked pixels, whatever the batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.data.patches import gather_patches, pad_cube
from pipeline.evaluation.inference import pixel_logits, predict_scene, scene_logits

H, W, K, P, C = 9, 7, 4, 5, 3


class Tiny(nn.Module):
    """A patch classifier small enough to check against by hand (no dense pass)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(K * P * P, C)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.flatten(1)))


@pytest.fixture
def padded():
    cube = np.random.default_rng(0).normal(size=(H, W, K)).astype(np.float32)
    return pad_cube(torch.from_numpy(cube), P, "zero")


def test_pixel_logits_match_each_patch_in_fp32(padded):
    model = Tiny().train()  # the loop must switch to eval: dropout off
    rows = torch.tensor([0, 8, 4, 4, 2])
    cols = torch.tensor([0, 6, 3, 3, 1])
    logits = pixel_logits(model, padded, rows, cols, P, batch_size=2)
    assert logits.shape == (5, C) and logits.dtype == torch.float32
    assert not model.training
    with torch.no_grad():
        expected = model(gather_patches(padded, rows, cols, P))
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(pixel_logits(model, padded, rows, cols, P, 100), logits)


def test_pixel_logits_runs_without_autocast(padded):
    """Validation and test share the precision: nothing in the loop may switch autocast on."""
    seen = []

    class Probe(Tiny):
        def forward(self, x):
            seen.append((torch.is_autocast_enabled("cpu"), x.dtype, self.fc.weight.dtype))
            return super().forward(x)

    rows, cols = torch.arange(H), torch.zeros(H, dtype=torch.long)
    model = Probe()
    plain = pixel_logits(model, padded, rows, cols, P, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # e.g. a training loop's autocast region
        inside = pixel_logits(model, padded, rows, cols, P, 4)
        scene, _ = scene_logits(model, padded, P, batch_size=16)
    assert seen and all(s == (False, torch.float32, torch.float32) for s in seen)
    assert inside.dtype == torch.float32 and scene.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_scene_logits_patch_path_covers_every_pixel(padded):
    model = Tiny()
    logits, method = scene_logits(model, padded, P, dense=True, batch_size=10)
    assert method == "patches" and logits.shape == (C, H, W)
    r, c = 6, 2
    one = pixel_logits(model, padded, torch.tensor([r]), torch.tensor([c]), P, 1)[0]
    torch.testing.assert_close(logits[:, r, c], one)
    pred = predict_scene(model, padded.permute(1, 2, 0)[2:-2, 2:-2].numpy(), P, batch_size=7)
    np.testing.assert_array_equal(pred.labels, logits.argmax(0).numpy() + 1)
