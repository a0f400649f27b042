"""Figures: readable PNGs, exact map sizes, a fixed distinct palette, atomic writes."""

from __future__ import annotations

import itertools

import matplotlib.image as mpimg
import numpy as np
import pytest

from pipeline.data.registry import DATASETS, default_rgb_bands
from pipeline.evaluation import figures as F

H, W, B = 12, 10, 20
NAMES = ["Asphalt", "Meadows", "Gravel", "Trees"]


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    cube = rng.normal(size=(H, W, B)).astype(np.float32)
    gt = rng.integers(0, len(NAMES) + 1, (H, W))
    pred = np.where(rng.random((H, W)) < 0.3, rng.integers(1, len(NAMES) + 1, (H, W)), gt)
    pred[gt == 0] = rng.integers(1, len(NAMES) + 1, int((gt == 0).sum()))
    return cube, gt, pred


def _read_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


def _assert_only(tmp_path, *names):
    """Exactly the expected files exist: no temp files left behind."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def _to_u8(rgb):
    return np.round(np.asarray(rgb)[..., :3] * 255).astype(int)


def test_class_palette_is_fixed_and_distinct():
    for n in (1, 9, 16, 17, 20, 24, 36):
        pal = F.class_palette(n)
        assert pal.shape == (n + 1, 3)
        assert pal.dtype == np.float64
        assert np.all((pal >= 0) & (pal <= 1))
        np.testing.assert_array_equal(pal[0], [0, 0, 0])
        np.testing.assert_array_equal(pal, F.class_palette(n))
        dist = np.linalg.norm(pal[:, None] - pal[None], axis=-1)
        assert dist[~np.eye(n + 1, dtype=bool)].min() > 0.2
    # class k keeps its colour whatever the class count; first classes are the Indian Pines map
    np.testing.assert_array_equal(F.class_palette(40)[:17], F.class_palette(16))
    np.testing.assert_allclose(F.class_palette(16)[1], np.array([255, 254, 137]) / 255)
    big = F.class_palette(60)
    assert len({tuple(c) for c in _to_u8(big)}) == 61


def test_class_palette_rejects_no_classes():
    with pytest.raises(ValueError):
        F.class_palette(0)
    with pytest.raises(ValueError, match="2 class colours"):
        F.class_palette(3, [(1, 2, 3), (4, 5, 6)])


def test_class_palette_uses_the_dataset_colours():
    pavia = DATASETS["pavia_university"]
    pal = F.class_palette(len(pavia.class_names), pavia.palette)
    np.testing.assert_array_equal(pal[0], [0, 0, 0])
    np.testing.assert_allclose(pal[1:] * 255, np.asarray(pavia.palette))
    own = F.class_palette(2, [[10, 20, 30], [40, 50, 60]])
    np.testing.assert_allclose(own[2] * 255, [40, 50, 60])


def test_false_colour_default_bands_and_stretch(scene):
    cube, _, _ = scene
    rgb = F.false_colour(cube)
    assert rgb.shape == (H, W, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    bands = default_rgb_bands(B)
    assert len(set(bands)) == 3 and bands[0] > bands[1] > bands[2]
    np.testing.assert_array_equal(rgb, F.false_colour(cube, bands))
    for i, b in enumerate(bands):
        lo, hi = np.percentile(cube[..., b], [2, 98])
        expected = np.clip((cube[..., b] - lo) / (hi - lo), 0, 1)
        np.testing.assert_allclose(rgb[..., i], expected, atol=1e-6)


def test_false_colour_handles_constant_and_nan_bands():
    cube = np.ones((4, 5, 3))
    cube[0, 0, 1] = np.nan
    cube[..., 2] = np.arange(20).reshape(4, 5)
    rgb = F.false_colour(cube, bands=(0, 1, 2))
    assert np.all(np.isfinite(rgb))
    assert np.all(rgb[..., :2] == 0.0)
    assert rgb[0, 0, 2] == 0.0 and rgb[-1, -1, 2] == 1.0
    with pytest.raises(ValueError):
        F.false_colour(cube, bands=(0, 1, 3))
    with pytest.raises(ValueError):
        F.false_colour(cube[..., 0])


def test_label_to_rgb_and_error_map(scene):
    _, gt, pred = scene
    pal = F.class_palette(len(NAMES))
    rgb = F.label_to_rgb(gt, pal)
    assert rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(rgb, pal[gt])
    with pytest.raises(ValueError):
        F.label_to_rgb(np.full((2, 2), len(NAMES) + 1), pal)

    err = F.error_map(gt, pred)
    assert err.shape == (H, W, 3)
    np.testing.assert_array_equal(err[gt == 0], np.broadcast_to(F.BACKGROUND, err[gt == 0].shape))
    right = (gt > 0) & (pred == gt)
    wrong = (gt > 0) & (pred != gt)
    assert right.any() and wrong.any()
    assert np.all(err[right] == F.CORRECT_COLOUR)
    assert np.all(err[wrong] == F.ERROR_COLOUR)


def test_save_label_png_is_exactly_scene_size(tmp_path, scene):
    _, gt, _ = scene
    pal = F.class_palette(len(NAMES))
    path = tmp_path / "gt.png"
    F.save_label_png(path, gt, pal)
    img = _read_png(path)
    assert img.shape[:2] == (H, W)
    np.testing.assert_array_equal(_to_u8(img), _to_u8(pal[gt]))
    F.save_label_png(tmp_path / "masked.png", gt, pal, mask=gt > 2)
    assert np.all(_to_u8(mpimg.imread(tmp_path / "masked.png"))[gt > 2] == 0)
    _assert_only(tmp_path, "gt.png", "masked.png")


def test_save_map_draws_scene_pixel_exact(tmp_path, scene):
    _, gt, pred = scene
    path = tmp_path / "sub" / "pred.png"
    F.save_map(path, pred, NAMES, title="Prediction", mask=gt == 0)
    img = _to_u8(_read_png(path))
    shown = np.where(gt == 0, 0, pred)
    expected = _to_u8(F.class_palette(len(NAMES))[shown])
    k = int(F._scene_scale(H, W, 600, 2400))
    assert k > 1
    blocks = np.repeat(np.repeat(expected, k, axis=0), k, axis=1)
    hits = [
        (y, x)
        for y, x in itertools.product(range(img.shape[0] - H * k + 1), range(40))
        if np.array_equal(img[y : y + H * k : k, x : x + W * k : k], expected)
        and np.array_equal(img[y : y + H * k, x : x + W * k], blocks)
    ]
    assert len(hits) == 1
    assert img.shape[1] > W * k
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["pred.png"]


def test_save_map_rejects_labels_beyond_class_names(tmp_path, scene):
    _, gt, _ = scene
    with pytest.raises(ValueError):
        F.save_map(tmp_path / "bad.png", gt, NAMES[:2])
    _assert_only(tmp_path)


def test_save_map_panel(tmp_path, scene):
    cube, gt, pred = scene
    pal = F.class_palette(len(NAMES))
    panels = [
        ("False colour", F.false_colour(cube)),
        ("Ground truth", F.label_to_rgb(gt, pal)),
        ("Prediction", F.label_to_rgb(pred, pal)),
        ("Prediction (labelled)", F.label_to_rgb(np.where(gt > 0, pred, 0), pal)),
        ("Errors", F.error_map(gt, pred)),
    ]
    extra = {"correct": F.CORRECT_COLOUR, "error": F.ERROR_COLOUR}
    F.save_map_panel(tmp_path / "panel.png", panels, NAMES, pal, title="Scene", extra_legend=extra)
    F.save_map_panel(tmp_path / "row.png", panels, NAMES, pal, ncols=5)
    wide = _read_png(tmp_path / "row.png")
    assert wide.shape[1] > 5 * W and wide.shape[1] > wide.shape[0]
    _read_png(tmp_path / "panel.png")
    _assert_only(tmp_path, "panel.png", "row.png")


def test_save_confusion_png(tmp_path):
    cm = np.array([[50, 2, 3, 0], [5, 40, 5, 0], [0, 10, 35, 0], [0, 0, 0, 0]])
    F.save_confusion_png(tmp_path / "cm.png", cm, NAMES, title="Confusion")
    img = _read_png(tmp_path / "cm.png")
    assert img.shape[1] > img.shape[0]
    with pytest.raises(ValueError):
        F.save_confusion_png(tmp_path / "bad.png", cm, NAMES[:3])
    _assert_only(tmp_path, "cm.png")


def test_save_curve_png(tmp_path):
    epochs = list(range(1, 11))
    series = {
        "train": [1 / e for e in epochs],
        "val": [np.nan if e % 2 else 1.2 / e for e in epochs],
    }
    F.save_curve_png(tmp_path / "curve.png", epochs, series, "epoch", "loss", title="Loss")
    F.save_curve_png(tmp_path / "noise.png", [0.0, 0.05, 0.1], {"OA": [0.9, 0.8, 0.6]}, "σ", "OA")
    _read_png(tmp_path / "curve.png")
    _read_png(tmp_path / "noise.png")
    with pytest.raises(ValueError):
        F.save_curve_png(tmp_path / "bad.png", epochs, {"train": [1, 2]}, "epoch", "loss")
    _assert_only(tmp_path, "curve.png", "noise.png")


def test_save_split_png(tmp_path, scene):
    cube, gt, _ = scene
    rng = np.random.default_rng(3)
    labelled = gt > 0
    train = labelled & (rng.random((H, W)) < 0.3)
    masks = {
        "train": train,
        "val": labelled & ~train & (rng.random((H, W)) < 0.2),
        "test": labelled & ~train,
        "guard": np.zeros((H, W), bool),
        "holdout": ~labelled,
    }
    masks["test"] &= ~masks["val"]
    F.save_split_png(tmp_path / "split.png", F.false_colour(cube), masks, title="Split")
    _read_png(tmp_path / "split.png")
    with pytest.raises(ValueError):
        F.save_split_png(tmp_path / "bad.png", F.false_colour(cube), {"train": np.ones((2, 2))})
    _assert_only(tmp_path, "split.png")
