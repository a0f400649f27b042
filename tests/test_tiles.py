"""Tile training: the shared-trunk tile pass equals the patch path, and the epoch plan is sound."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from prepared import prepared_data, train_cfg
from torch import nn

from pipeline.data.patches import gather_patches, pad_cube
from pipeline.models import MODELS, build_model
from pipeline.training.classifier import (
    resolve_batching,
    tile_plan,
    tile_side,
    train_classifier,
)

K, P, C = 16, 11, 5
H, W = 23, 19


def _loss_and_grads(model, logits, target):
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(logits, target, reduction="sum")
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return loss.item(), grads


# Tiles that touch each scene border and a corner, and one strictly inside.
TILES = [(0, 9, 0, 8), (14, 23, 11, 19), (0, 23, 5, 13), (6, 17, 0, 19), (5, 12, 4, 11)]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("bounds", TILES)
def test_tile_pass_equals_patch_path(name, bounds):
    """Same pixels, same weights, dropout off, fp32: equal loss, gradients and BN statistics."""
    gen = torch.Generator().manual_seed(hash(bounds) % 2**31)
    cube = torch.randn(H, W, K, generator=gen)
    padded = pad_cube(cube, P)
    tile_model = build_model(name, K, P, C, dropout=0.0).train()
    patch_model = copy.deepcopy(tile_model)
    r0, r1, c0, c1 = bounds
    n = 7
    rows = torch.randint(r0, r1, (n,), generator=gen)
    cols = torch.randint(c0, c1, (n,), generator=gen)
    rows[0], cols[0] = r0, c0  # the tile's corner pixel, at the scene border for most tiles
    target = torch.randint(0, C, (n,), generator=gen)

    window = padded[:, r0 : r1 + P - 1, c0 : c1 + P - 1][None, None]
    tile_loss, tile_grads = _loss_and_grads(
        tile_model, tile_model.forward_tile(window, rows - r0, cols - c0), target
    )
    patch_loss, patch_grads = _loss_and_grads(
        patch_model, patch_model(gather_patches(padded, rows, cols, P)), target
    )
    assert tile_loss == pytest.approx(patch_loss, rel=1e-5)
    for key, g in patch_grads.items():
        scale = g.abs().max().item() + 1e-12
        assert (tile_grads[key] - g).abs().max().item() / scale < 1e-4, key
    for (key, a), (_, b) in zip(
        tile_model.named_buffers(), patch_model.named_buffers(), strict=True
    ):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=key)


def test_tile_batchnorm_weights_positions():
    """Plain BN over a tile's positions differs from the patch path: the weighting is needed."""
    gen = torch.Generator().manual_seed(3)
    cube = torch.randn(H, W, K, generator=gen)
    padded = pad_cube(cube, P)
    model = build_model("hybridsn_2d3d", K, P, C, dropout=0.0).train()
    rows, cols = torch.tensor([2, 3, 15]), torch.tensor([4, 4, 10])
    window = padded[None, None]
    with torch.no_grad():
        tile = model.forward_tile(window, rows, cols)
        patch = model(gather_patches(padded, rows, cols, P))
        torch.testing.assert_close(tile, patch, rtol=1e-4, atol=1e-5)
        plain = model.pixel_head(
            _windows(nn.Module.__call__(_Plain(model), window)[0], rows, cols, P - 8)
        )
    assert (plain - patch).abs().max() > 1e-3


class _Plain(nn.Module):
    """The model's shared part with ordinary (unweighted) batch statistics."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.shared_features(x)


def _windows(maps, rows, cols, k):
    view = maps.unfold(1, k, 1).unfold(2, k, 1)
    return view.permute(1, 2, 0, 3, 4)[rows, cols]


def test_several_tiles_in_one_pass_equal_the_patch_path():
    """A step's tiles are batched: still the patch path's loss, gradients and BN statistics."""
    gen = torch.Generator().manual_seed(5)
    padded = pad_cube(torch.randn(H, W, K, generator=gen), P)
    tile_model = build_model("hybridsn_dsc", K, P, C, dropout=0.0).train()
    patch_model = copy.deepcopy(tile_model)
    starts, side = [(0, 0), (12, 9), (4, 10)], 9
    tiles = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    rows = torch.tensor([0, 8, 3, 1, 0, 8, 5])
    cols = torch.tensor([0, 2, 8, 4, 0, 8, 1])
    windows = torch.stack(
        [padded[:, r : r + side + P - 1, c : c + side + P - 1] for r, c in starts]
    )[:, None]
    scene_rows = rows + torch.tensor([r for r, _ in starts])[tiles]
    scene_cols = cols + torch.tensor([c for _, c in starts])[tiles]
    target = torch.randint(0, C, (7,), generator=gen)
    tile_loss, tile_grads = _loss_and_grads(
        tile_model, tile_model.forward_tile(windows, rows, cols, tiles), target
    )
    patch_loss, patch_grads = _loss_and_grads(
        patch_model, patch_model(gather_patches(padded, scene_rows, scene_cols, P)), target
    )
    assert tile_loss == pytest.approx(patch_loss, rel=1e-5)
    for key, g in patch_grads.items():
        assert (tile_grads[key] - g).abs().max() / (g.abs().max() + 1e-12) < 1e-4, key
    for (key, a), (_, b) in zip(
        tile_model.named_buffers(), patch_model.named_buffers(), strict=True
    ):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("side", [(1, 1), (4, 4), (7, 5), (H, W)])
def test_tile_plan_uses_every_pixel_once(side):
    gen = torch.Generator().manual_seed(side[0])
    mask = torch.rand(H, W, generator=gen) < 0.4
    rows, cols = (t.long() for t in torch.nonzero(mask, as_tuple=True))
    th, tw = side
    for _ in range(3):
        steps = tile_plan(rows, cols, H, W, side, gen, step_pixels=5)
        seen = torch.cat([step.pixels for step in steps])
        assert sorted(seen.tolist()) == list(range(rows.numel()))
        grouped = [step for step in steps if step.pixels.numel() <= 5 or len(step.starts) > 1]
        assert all(step.pixels.numel() <= 5 for step in steps if len(step.starts) == 1)
        assert sum(step.pixels.numel() < 5 for step in grouped) <= 1 + sum(
            len(step.starts) == 1 for step in grouped
        )
        for step in steps:
            assert step.tiles.numel() == step.pixels.numel()
            for t, (r0, c0) in enumerate(step.starts):
                assert 0 <= r0 <= H - th and 0 <= c0 <= W - tw
                mine = step.pixels[step.tiles == t]
                assert mine.numel() > 0  # tiles without training pixels are dropped
                assert ((rows[mine] >= r0) & (rows[mine] < r0 + th)).all()
                assert ((cols[mine] >= c0) & (cols[mine] < c0 + tw)).all()


def test_tile_plan_offsets_move_and_steps_mix_the_scene():
    rows, cols = (
        t.reshape(-1) for t in torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    )
    gen = torch.Generator().manual_seed(0)
    plans = [tile_plan(rows, cols, H, W, (4, 4), gen, step_pixels=40) for _ in range(10)]
    assert len({p[0].starts[0] for p in plans}) > 3
    assert max(len(step.starts) for p in plans for step in p) >= 3


def test_scene_sized_tile_gives_random_batches():
    rows, cols = (
        t.reshape(-1) for t in torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    )
    gen = torch.Generator().manual_seed(1)
    steps = tile_plan(rows, cols, H, W, (H, W), gen, step_pixels=50)
    sizes = sorted((s.pixels.numel() for s in steps), reverse=True)
    assert sizes == [50] * (H * W // 50) + [H * W % 50]
    first = max(steps, key=lambda s: s.pixels.numel()).pixels
    assert rows[first].unique().numel() > H // 2  # drawn from all over the scene


def test_tile_side_defaults_to_ten_halos_within_the_scene():
    assert tile_side(25, 145, 145) == (145, 145)
    assert tile_side(25, 610, 340) == (240, 240)
    assert tile_side(11, 30, 145) == (30, 100)
    assert tile_side(25, 145, 145, 16) == (16, 16)


def test_resolve_batching():
    model = build_model("hybridsn", K, P, C, dropout=0.4)
    assert resolve_batching(model, "auto") == "tiles"
    assert resolve_batching(model, "patches") == "patches"
    plain = nn.Sequential(nn.Flatten(), nn.Linear(K * P * P, C))
    assert resolve_batching(plain, "auto") == "patches"
    with pytest.raises(ValueError, match="no tile pass"):
        resolve_batching(plain, "tiles")


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.broadcast_to(1 + (np.arange(W) // 2) % 3, (H, W)).copy()
    cube = rng.normal(size=(H, W, K)).astype(np.float32)
    cube += labels[..., None] * 2.0
    train = rng.random((H, W)) < 0.3
    val = ~train & (rng.random((H, W)) < 0.3)
    return cube, labels, train, val


def test_tile_training_deterministic_and_learns():
    cube, labels, train, val = _scene()
    cfg = train_cfg(epochs=4, batching="tiles", tile_pixels=40, tile_size=6)

    def fit():
        torch.manual_seed(0)
        model = build_model("hybridsn", K, P, 3, dropout=0.2)
        data = prepared_data(cube, labels, train, val)
        return train_classifier(model, data, cfg, seed=1, patch_size=P, amp=False, progress=False)

    a, b = fit(), fit()
    assert a.batching == "tiles"
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    for key, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[key]), key
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]
    assert a.best_score > 0.6


def test_empty_tiles_are_skipped_never_nan():
    """One labelled corner: almost every tile is empty, and no step sees zero pixels."""
    cube, labels, _, _ = _scene()
    train = np.zeros((H, W), dtype=bool)
    train[:3, :3] = True
    cfg = train_cfg(epochs=3, batching="tiles", tile_pixels=1, tile_size=2)
    model = build_model("hybridsn_dsc", K, P, 3, dropout=0.4)
    data = prepared_data(cube, labels, train, np.zeros_like(train))
    result = train_classifier(model, data, cfg, seed=0, patch_size=P, amp=False, progress=False)
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    assert all(torch.isfinite(v).all() for v in result.state_dict.values() if v.is_floating_point())
