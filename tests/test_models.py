"""HybridSN family: sizes, registry, initialisation, training, checkpoints and dense inference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ParamsError
from pipeline.evaluation.inference import scene_logits
from pipeline.models import MODELS, build_model, count_parameters, init_keras_

NAMES = sorted(MODELS)
DENSE = ["hybridsn", "hybridsn_2d3d", "hybridsn_dsc"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_has_all_variants():
    assert set(MODELS) == {"hybridsn", "hybridsn_dsc", "hybridsn_se", "hybridsn_2d3d"}


def test_hybridsn_matches_paper_parameter_count():
    model = build_model("hybridsn", 30, 25, 16, dropout=0.4)
    assert count_parameters(model) == 5_122_176
    per_layer = [
        sum(p.numel() for p in layer.parameters())
        for layer in (*model.conv3d[::2], model.conv2d[0], model.fc1, model.fc2, model.fc3)
    ]
    assert per_layer == [512, 5_776, 13_856, 331_840, 4_735_232, 32_896, 2_064]


def test_count_parameters_skips_frozen():
    model = build_model("hybridsn", 30, 25, 16, dropout=0.4)
    model.fc1.requires_grad_(False)
    assert count_parameters(model) == 5_122_176 - 4_735_232


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(30, 25, 16), (15, 25, 9), (20, 11, 5), (16, 13, 3), (13, 9, 2)])
def test_builds_for_any_size(name, size):
    bands, patch, classes = size
    model = build_model(name, bands, patch, classes, dropout=0.4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, bands, patch, patch))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()
    assert model.config["name"] == name
    assert (model.config["bands"], model.config["patch_size"], model.config["n_classes"]) == size


def test_unknown_name_lists_known_names():
    with pytest.raises(ParamsError) as err:
        build_model("hybridsn_xl", 30, 25, 16, dropout=0.4)
    for name in NAMES:
        assert name in str(err.value)


def test_unknown_option_is_a_params_error():
    with pytest.raises(ParamsError, match="reduction"):
        build_model("hybridsn", 30, 25, 16, reduction=8, dropout=0.4)


@pytest.mark.parametrize(
    ("name", "args", "kw", "match"),
    [
        ("hybridsn", (12, 25, 16), {}, "bands.*13"),
        ("hybridsn_dsc", (12, 25, 16), {}, "bands.*13"),
        ("hybridsn_se", (12, 25, 16), {}, "bands.*13"),
        ("hybridsn_2d3d", (30, 25, 16), {"mid_channels": 12}, "mid_channels.*13"),
        ("hybridsn", (30, 7, 16), {}, "patch_size.*9"),
        ("hybridsn_2d3d", (30, 7, 16), {}, "patch_size.*9"),
        ("hybridsn", (30, 10, 16), {}, "odd"),
        ("hybridsn", (30, 25, 1), {}, "n_classes"),
        ("hybridsn", (30.0, 25, 16), {}, "bands.*integer"),
        ("hybridsn", (30, 25, 16), {"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments(name, args, kw, match):
    with pytest.raises(ParamsError, match=match):
        build_model(name, *args, **{"dropout": 0.4, **kw})


def test_2d3d_accepts_few_bands():
    model = build_model("hybridsn_2d3d", 3, 9, 2, dropout=0.4)
    assert model(torch.randn(2, 1, 3, 9, 9)).shape == (2, 2)


def test_wrong_input_shape_is_reported():
    model = build_model("hybridsn", 16, 11, 3, dropout=0.4)
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 1, 15, 11, 11))
    with pytest.raises(ValueError, match="11×11"):
        model(torch.randn(2, 1, 16, 13, 13))


@pytest.mark.parametrize("name", NAMES)
def test_keras_initialisation(name):
    model = build_model(name, 16, 11, 3, dropout=0.4)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d | nn.Linear):
            w = module.weight
            fan_in = w.shape[1] * w[0, 0].numel()
            fan_out = w.shape[0] * w[0, 0].numel()
            assert w.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-7
            assert module.bias is None or not module.bias.any()
        elif isinstance(module, nn.BatchNorm2d):
            assert (module.weight == 1).all() and not module.bias.any()


def test_init_keras_returns_model():
    model = nn.Sequential(nn.Linear(4, 3))
    assert init_keras_(model) is model
    assert not model[0].bias.any()


def _separable_batch(n=32, bands=16, patch=11, classes=3):
    labels = torch.arange(n) % classes
    x = 0.3 * torch.randn(n, 1, bands, patch, patch)
    for c in range(classes):
        x[labels == c, :, c * bands // classes : (c + 1) * bands // classes] += 1.0
    return x, labels


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls(name):
    x, y = _separable_batch()
    model = build_model(name, 16, 11, 3, dropout=0.4).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    model = build_model(name, 16, 11, 3, dropout=0.4)
    _randomise(model)
    model.eval()
    path = tmp_path / "model.pt"
    torch.save({"config": model.config, "state_dict": model.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    clone = build_model(**ckpt["config"])
    clone.load_state_dict(ckpt["state_dict"])
    clone.eval()
    assert type(clone) is type(model)
    assert clone.config == model.config
    x = torch.randn(4, 1, 16, 11, 11)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)


def _randomise(model: nn.Module) -> None:
    """Non-trivial weights, biases and BatchNorm statistics, so every term of the model counts."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Conv3d | nn.Linear) and module.bias is not None:
                module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)


def _patches(padded: torch.Tensor, patch: int) -> torch.Tensor:
    """Every P×P window of (1, 1, K, H+P-1, W+P-1), row-major -> (H·W, 1, K, P, P)."""
    windows = padded[0, 0].unfold(1, patch, 1).unfold(2, patch, 1)
    return windows.permute(1, 2, 0, 3, 4).reshape(-1, 1, padded.shape[2], patch, patch)


@pytest.mark.parametrize("name", DENSE)
def test_dense_equals_patches(name):
    bands, patch, classes, height, width = 16, 11, 3, 12, 10
    model = build_model(name, bands, patch, classes, dropout=0.4)
    _randomise(model)
    model.eval()
    assert model.supports_dense
    scene = torch.randn(1, 1, bands, height, width)
    padded = F.pad(scene, (patch // 2,) * 4)
    with torch.no_grad():
        dense = model.forward_dense(padded)
        chunked = model.forward_dense(padded, chunk_rows=5)
        per_patch = model(_patches(padded, patch))
    assert dense.shape == (1, classes, height, width)
    expected = per_patch.reshape(height, width, classes).permute(2, 0, 1)
    assert (dense[0] - expected).abs().max() < 1e-4
    assert (chunked - dense).abs().max() < 1e-5
    assert expected.std() > 1e-3


def test_se_scene_pass_shares_the_3d_trunk_and_equals_patches():
    bands, patch, classes, height, width = 16, 11, 3, 12, 10
    model = build_model("hybridsn_se", bands, patch, classes, dropout=0.4)
    _randomise(model)
    model.eval()
    scene = torch.randn(1, 1, bands, height, width)
    padded = F.pad(scene, (patch // 2,) * 4)[0, 0]
    with torch.no_grad():
        logits, method = scene_logits(model, padded, patch, strip_rows=5, batch_size=7)
        per_patch = model(_patches(padded[None, None], patch))
    assert method == "shared" and logits.shape == (classes, height, width)
    expected = per_patch.reshape(height, width, classes).permute(2, 0, 1)
    assert (logits - expected).abs().max() < 1e-4
    assert expected.std() > 1e-3


def test_se_has_no_dense_path():
    model = build_model("hybridsn_se", 16, 11, 3, dropout=0.4).eval()
    assert not model.supports_dense
    with pytest.raises(NotImplementedError, match="hybridsn_se"):
        model.forward_dense(torch.zeros(1, 1, 16, 20, 20))


def test_dense_requires_eval_mode():
    model = build_model("hybridsn", 16, 11, 3, dropout=0.4)
    with pytest.raises(RuntimeError, match="eval"):
        model.forward_dense(torch.zeros(1, 1, 16, 20, 20))
