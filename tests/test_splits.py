"""Split invariants for every mode, the Indian Pines numbers, and leak-freedom of disjoint mode."""

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tifffile

from pipeline.data.splits import (
    GUARDS,
    MODES,
    Split,
    guard_radius,
    leakage_figures,
    leakage_share,
    make_split,
    split_from_params,
    split_summary,
    splittable_classes,
)
from pipeline.errors import DataError, ParamsError

IP_SIZES = {
    1: 46,
    2: 1428,
    3: 830,
    4: 237,
    5: 483,
    6: 730,
    7: 28,
    8: 478,
    9: 20,
    10: 972,
    11: 2455,
    12: 593,
    13: 205,
    14: 1265,
    15: 386,
    16: 93,
}


def synthetic_labels(h=64, w=72, seed=0) -> np.ndarray:
    """Blocky fields of 5 classes with scattered unlabelled pixels, like a small scene."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), dtype=np.int64)
    labels[: h // 2, : w // 2] = 1
    labels[: h // 2, w // 2 :] = 2
    labels[h // 2 :, : w // 3] = 3
    labels[h // 2 :, w // 3 :] = 4
    labels[5:15, 40:70] = 5
    labels[rng.random((h, w)) < 0.2] = 0
    labels[:, 20:23] = 0
    return labels


@pytest.fixture(scope="module")
def ip_gt() -> np.ndarray:
    root = importlib.util.find_spec("tensorly").submodule_search_locations[0]
    return np.load(Path(root) / "datasets" / "data" / "Indian_pines_gt.npy").astype(np.int64)


def fixed_train_mask(labels: np.ndarray) -> np.ndarray:
    """Every fourth column of labelled pixels: each synthetic class gets train and test."""
    mask = np.zeros(labels.shape, dtype=bool)
    mask[:, ::4] = True
    return mask & (labels > 0)


def split_kwargs(mode, labels=None):
    if mode == "disjoint":
        return {"patch_size": 7, "tile_size": 10}
    if mode == "kfold":
        return {"patch_size": 7}  # 7-pixel blocks: every class of this scene in every fold
    if mode == "fixed":
        return {"fixed_train": fixed_train_mask(synthetic_labels() if labels is None else labels)}
    return {}


def assert_valid(labels: np.ndarray, split: Split) -> None:
    masks = [split.train, split.val, split.test, split.guard, split.excluded]
    for m in masks:
        assert m.dtype == bool and m.shape == labels.shape
        assert not (m & (labels == 0)).any()
    total = np.sum(masks, axis=0)
    assert total.max() <= 1, "masks overlap"
    np.testing.assert_array_equal(total == 1, labels > 0)


def brute_force_near(pool: np.ndarray, r: int) -> np.ndarray:
    """Pixels within Chebyshev distance r of a pool pixel, one window at a time."""
    h, w = pool.shape
    near = np.zeros_like(pool)
    for y in range(h):
        for x in range(w):
            near[y, x] = pool[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].any()
    return near


@pytest.mark.parametrize("mode", MODES)
def test_masks_are_disjoint_and_cover_labelled_pixels(mode):
    labels = synthetic_labels()
    split = make_split(labels, mode, seed=3, **split_kwargs(mode))
    assert_valid(labels, split)
    assert split.mode == mode and split.seed == 3
    for c in range(1, 6):
        in_c = labels == c
        assert (split.train & in_c).any(), f"class {c} has no training pixel"
        assert (split.test & in_c).any(), f"class {c} has no test pixel"
    if mode != "disjoint":
        assert not split.guard.any()
    assert split.not_scored == []


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_split_and_different_seed_different_split(mode):
    labels = synthetic_labels()
    kw = split_kwargs(mode)
    a, b = make_split(labels, mode, seed=1, **kw), make_split(labels, mode, seed=1, **kw)
    c = make_split(labels, mode, seed=2, **kw)
    for name in ("train", "val", "test", "guard"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.train, c.train)


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5, 0.77])
def test_random_is_stratified_with_sklearn_pool_size(fraction):
    labels = synthetic_labels()
    split = make_split(labels, "random", train_fraction=fraction, seed=4)
    n = int((labels > 0).sum())
    assert int(split.train_pool.sum()) == int(np.floor(fraction * n))
    for c in range(1, 6):
        n_c = int((labels == c).sum())
        assert abs(int((split.train_pool & (labels == c)).sum()) - fraction * n_c) < 1 + 1e-9


def test_random_matches_sklearn_on_indian_pines(ip_gt):
    from sklearn.model_selection import train_test_split

    y = ip_gt[ip_gt > 0]
    assert dict(zip(*np.unique(y, return_counts=True), strict=True)) == IP_SIZES
    idx = np.arange(len(y))
    paper_train, _ = train_test_split(idx, test_size=0.7, stratify=y, random_state=345)
    sk_train, _ = train_test_split(idx, train_size=0.3, stratify=y, random_state=0)
    split = make_split(ip_gt, "random", train_fraction=0.3, seed=0)
    assert len(paper_train) == len(sk_train) == int(split.train_pool.sum()) == 3074
    assert_valid(ip_gt, split)
    assert leakage_share(split.train_pool, split.test, 25) > 0.99
    for c, n_c in IP_SIZES.items():
        pool_c = int((split.train_pool & (ip_gt == c)).sum())
        assert abs(pool_c - 0.3 * n_c) < 1 + 1e-9
        assert (split.train & (ip_gt == c)).any() and (split.test & (ip_gt == c)).any()


def test_random_gives_tiny_classes_a_train_and_a_test_pixel():
    labels = synthetic_labels()
    labels[labels == 5] = 0
    labels[0, 0], labels[0, 1] = 5, 5
    for fraction in (0.01, 0.99):
        split = make_split(labels, "random", train_fraction=fraction, val_fraction=0.0)
        assert (split.train & (labels == 5)).sum() == 1
        assert (split.test & (labels == 5)).sum() == 1


def test_random_rejects_a_single_pixel_class():
    labels = synthetic_labels()
    labels[labels == 5] = 0
    labels[0, 0] = 5
    with pytest.raises(DataError, match=r"class 5 has only 1"):
        make_split(labels, "random")


def test_per_class_count_and_floor_rule():
    labels = synthetic_labels()
    labels[labels == 5] = 0
    labels[0, :9] = 5
    split = make_split(labels, "per_class", per_class_count=40, min_per_class=5, val_fraction=0)
    for c in range(1, 5):
        assert int((split.train & (labels == c)).sum()) == 40
    assert int((split.train & (labels == 5)).sum()) == 5
    assert int((split.test & (labels == 5)).sum()) == 4
    labels[0, :9] = 0
    labels[0, :30] = 5
    split = make_split(labels, "per_class", per_class_count=40, min_per_class=5, val_fraction=0)
    assert int((split.train & (labels == 5)).sum()) == 15
    labels[0, 5:30] = 0
    with pytest.raises(DataError, match=r"class 5 has only 5"):
        make_split(labels, "per_class", per_class_count=40, min_per_class=5)


@pytest.mark.parametrize("mode", ["random", "per_class", "fixed"])
def test_val_is_carved_from_the_pool(mode):
    labels = synthetic_labels()
    kw = split_kwargs(mode)
    with_val = make_split(labels, mode, seed=5, val_fraction=0.25, **kw)
    without = make_split(labels, mode, seed=5, val_fraction=0.0, **kw)
    assert not without.val.any()
    np.testing.assert_array_equal(with_val.train_pool, without.train_pool)
    np.testing.assert_array_equal(with_val.test, without.test)
    assert with_val.val.any()
    for c in range(1, 6):
        assert (with_val.train & (labels == c)).any()
    share = with_val.val.sum() / with_val.train_pool.sum()
    assert abs(share - 0.25) < 0.01
    for c in range(1, 6):
        pool_c = (with_val.train_pool & (labels == c)).sum()
        assert abs((with_val.val & (labels == c)).sum() - 0.25 * pool_c) <= 1


def assert_guarded(split: Split, labels: np.ndarray, r: int) -> None:
    """Brute force: no val or test pixel within r of a training pixel; every guard pixel is."""
    near = brute_force_near(split.train, r)
    assert not (near & split.test).any(), "a test pixel lies within the guard radius"
    assert not (near & split.val).any(), "a validation pixel lies within the guard radius"
    assert (near[split.guard]).all(), "guard holds a pixel no training pixel reaches"
    for c in np.unique(labels[labels > 0]):
        has_train = (split.train & (labels == c)).any()
        assert has_train or not ((split.test | split.val) & (labels == c)).any()


@pytest.mark.parametrize("guard", GUARDS)
def test_disjoint_synthetic_guard_band_by_brute_force(guard):
    labels = synthetic_labels()
    p = 7
    split = make_split(labels, "disjoint", seed=0, patch_size=p, tile_size=12, guard=guard)
    assert split.tile_size == 12 and split.guard_mode == guard
    assert_valid(labels, split)
    r = guard_radius(guard, p)
    assert r == {"centre": 3, "window": 6}[guard]
    assert_guarded(split, labels, r)
    assert split.val.any() and split.test.any()
    for c in range(1, 6):
        for name in ("train", "val", "test"):
            assert (getattr(split, name) & (labels == c)).any(), f"class {c}: no {name} pixel"
    assert leakage_share(split.train, split.test, p, guard) == 0.0
    assert leakage_share(split.train, split.val, p, guard) == 0.0


def test_disjoint_val_split_keeps_the_fraction_targets():
    labels = synthetic_labels(96, 96)
    split = make_split(labels, "disjoint", seed=0, patch_size=5, tile_size=8, val_fraction=0.25)
    n_train, n_val, n_test = (int(getattr(split, k).sum()) for k in ("train", "val", "test"))
    assert abs((n_train + n_val) / (n_train + n_val + n_test) - 0.3) < 0.1
    assert abs(n_val / (n_train + n_val) - 0.25) < 0.12


@pytest.mark.parametrize("guard", GUARDS)
def test_disjoint_indian_pines_is_leak_free(ip_gt, guard):
    """The acceptance check: 0 test and 0 val pixels reached; no class scored unseen."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        split = make_split(ip_gt, "disjoint", seed=0, patch_size=25, guard=guard)
    assert_valid(ip_gt, split)
    r = guard_radius(guard, 25)
    leak = leakage_figures(split, 25)[guard]
    assert leak["train_to_test_pixels"] == 0 and leak["train_to_val_pixels"] == 0
    train_px = np.argwhere(split.train)
    for y, x in np.argwhere(split.test | split.val):
        assert np.abs(train_px - (y, x)).max(axis=1).min() > r
    assert (brute_force_near(split.train, r)[split.guard]).all()
    assert split.val.any() and split.test.sum() > 1000
    ok = splittable_classes(ip_gt, 25, guard)
    unsplittable = [c for c, v in ok.items() if not v]
    assert unsplittable == {"centre": [1, 7, 9], "window": [1, 4, 7, 9, 16]}[guard]
    assert set(unsplittable) <= set(split.not_scored)
    for c in range(1, 17):
        in_test = (split.test & (ip_gt == c)).any()
        assert in_test == (c not in split.not_scored), f"class {c}"
        if in_test:
            assert (split.train & (ip_gt == c)).any(), f"class {c} scored without training"


def test_disjoint_warns_about_unsplittable_classes(ip_gt):
    with pytest.warns(UserWarning, match=r"\[1, 7, 9\]"):
        make_split(ip_gt, "disjoint", seed=1, patch_size=25)


def test_unsplittable_class_is_not_scored_and_named():
    labels = synthetic_labels()
    labels[labels == 5] = 0
    labels[40:42, 60:62] = 5  # a 2 x 2 field: no guard band can separate train from test
    with pytest.warns(UserWarning, match=r"\[5\]"):
        split = make_split(labels, "disjoint", seed=0, patch_size=7, tile_size=10)
    assert_valid(labels, split)
    assert split.not_scored == [5]
    assert not ((split.test | split.val) & (labels == 5)).any()
    summary = split_summary(labels, split, 7, class_names=list("abcde"))
    assert summary["not_scored"] == [{"label": 5, "name": "e"}]
    assert summary["not_scored_note"].startswith("not scored: 5 (e)")
    assert [r["scored"] for r in summary["per_class"]] == [True] * 4 + [False]


def test_disjoint_with_nothing_to_score_is_an_error():
    labels = np.zeros((12, 12), dtype=np.int64)
    labels[:2, :2], labels[8:10, 8:10] = 1, 2  # both classes narrower than the guard radius
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"nothing could be scored"):
        make_split(labels, "disjoint", patch_size=7, tile_size=4)


def test_leakage_share_matches_brute_force_at_borders():
    rng = np.random.default_rng(7)
    pool = rng.random((30, 41)) < 0.02
    pool[0, 0] = pool[-1, -1] = pool[0, -1] = True
    test = ~pool & (rng.random(pool.shape) < 0.5)
    for p in (1, 3, 5, 9):
        near = brute_force_near(pool, p // 2)
        expected = (near & test).sum() / test.sum()
        assert leakage_share(pool, test, p) == pytest.approx(expected)
    assert leakage_share(pool, np.zeros_like(pool), 5) == 0.0


def test_split_summary_is_json_ready_and_consistent():
    labels = synthetic_labels()
    split = make_split(labels, "disjoint", seed=2, patch_size=7, tile_size=10)
    names = ["a", "b", "c", "d", "e"]
    summary = split_summary(labels, split, 7, class_names=names)
    json.dumps(summary)
    counts = summary["counts"]
    assert counts["train_pool"] == counts["train"] + counts["val"]
    assert sum(counts[k] for k in ("train", "val", "test", "guard")) == (labels > 0).sum()
    assert [r["name"] for r in summary["per_class"]] == names
    for row in summary["per_class"]:
        assert row["total"] == row["train"] + row["val"] + row["test"] + row["guard"]
    assert summary["leakage_share"] == 0.0 and summary["leakage_percent"] == 0.0
    assert summary["leakage"]["centre"]["train_to_val_pixels"] == 0
    assert summary["guard"] == "centre" and summary["not_scored"] == []
    assert summary["mode"] == "disjoint" and summary["seed"] == 2 and summary["patch_size"] == 7
    random = split_summary(labels, make_split(labels, "random"), 7, class_names={1: "x"})
    assert random["per_class"][0]["name"] == "x" and random["per_class"][1]["name"] == "class_2"
    assert random["leakage_percent"] == pytest.approx(100 * random["leakage_share"])
    assert random["leakage_share"] > 0.9


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mode": "spatial"}, "mode"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"train_fraction": 1.0}, "train_fraction"),
        ({"train_fraction": 1.5}, "train_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"patch_size": 24}, "patch_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"per_class_count": 0}, "per_class_count"),
        ({"min_per_class": 0}, "min_per_class"),
        ({"tile_size": 0}, "tile_size"),
        ({"seed": -1}, "seed"),
        ({"guard": "edge"}, "guard"),
    ],
)
def test_bad_arguments_raise_params_error_naming_them(kwargs, name):
    args = {"mode": "random"} | kwargs
    with pytest.raises(ParamsError, match=name):
        make_split(synthetic_labels(), **args)


def test_bad_labels_raise_data_error():
    with pytest.raises(DataError, match="2-D"):
        make_split(np.zeros(5, dtype=int), "random")
    with pytest.raises(DataError, match="no labelled"):
        make_split(np.zeros((4, 4), dtype=int), "random")
    with pytest.raises(DataError, match="integers"):
        make_split(np.ones((4, 4)), "random")
    with pytest.raises(ParamsError, match="patch_size"):
        leakage_share(np.zeros((3, 3), bool), np.zeros((3, 3), bool), 4)


def test_leakage_figures_match_brute_force_for_both_definitions():
    rng = np.random.default_rng(3)
    train = rng.random((30, 41)) < 0.01
    train[0, 0] = True
    test = ~train & (rng.random(train.shape) < 0.3)
    val = ~train & ~test & (rng.random(train.shape) < 0.3)
    split = Split(train, val, test, np.zeros_like(train))
    figures = leakage_figures(split, 5)
    for guard, r in (("centre", 2), ("window", 4)):
        near = brute_force_near(train, r)
        row = figures[guard]
        assert row["radius"] == r
        assert row["train_to_test_pixels"] == int((near & test).sum())
        assert row["train_to_val_pixels"] == int((near & val).sum())
        assert row["train_to_test_share"] == pytest.approx((near & test).sum() / test.sum())
        assert leakage_share(train, test, 5, guard) == pytest.approx(row["train_to_test_share"])
    assert figures["window"]["train_to_test_pixels"] > figures["centre"]["train_to_test_pixels"]


def _write(path: Path, arr: np.ndarray) -> Path:
    if path.suffix == ".npy":
        np.save(path, arr)
    elif path.suffix == ".mat":
        scipy.io.savemat(path, {"TRmask": arr})
    else:
        tifffile.imwrite(path, arr)
    return path


@pytest.mark.parametrize("suffix", [".npy", ".mat", ".tif"])
@pytest.mark.parametrize("form", ["mask", "label_map"])
def test_fixed_split_from_files(tmp_path, suffix, form):
    labels = synthetic_labels()
    member = fixed_train_mask(labels)
    arr = member.astype(np.uint8) if form == "mask" else np.where(member, labels, 0)
    if form == "label_map":
        arr = arr.astype(np.uint16)
    path = _write(tmp_path / f"train{suffix}", arr)
    split = make_split(labels, "fixed", seed=0, fixed_train=path, val_fraction=0.2)
    assert_valid(labels, split)
    np.testing.assert_array_equal(split.train_pool, member)
    np.testing.assert_array_equal(split.test, (labels > 0) & ~member)
    assert abs(split.val.sum() / member.sum() - 0.2) < 0.01
    assert split.mode == "fixed" and split.not_scored == []


def test_fixed_split_with_test_file_and_unused_pixels(tmp_path):
    labels = synthetic_labels()
    train = fixed_train_mask(labels)
    test = np.zeros_like(train)
    test[:, 1::4] = True
    test &= labels > 0
    tr, te = _write(tmp_path / "tr.npy", train), _write(tmp_path / "te.tif", test)
    params = {
        "mode": "fixed",
        "seed": 0,
        "train_fraction": 0.3,
        "per_class_count": 50,
        "min_per_class": 5,
        "val_fraction": 0.0,
        "tile_size": None,
        "guard": "centre",
        "fixed": {"train": str(tr), "test": str(te)},
    }
    split = split_from_params(labels, params, 7)
    assert_valid(labels, split)
    np.testing.assert_array_equal(split.test, test)
    np.testing.assert_array_equal(split.excluded, (labels > 0) & ~train & ~test)
    summary = split_summary(labels, split, 7)
    assert summary["leakage"]["centre"]["train_to_test_share"] == 1.0


def test_fixed_class_without_training_pixels_is_not_scored():
    labels = synthetic_labels()
    train = fixed_train_mask(labels) & (labels != 5)
    split = make_split(labels, "fixed", fixed_train=train)
    assert split.not_scored == [5]
    assert not (split.test & (labels == 5)).any()
    assert (split.excluded == (labels == 5)).all()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("shape", r"train.npy: training mask has shape \(64, 71\).*\(64, 72\)"),
        ("empty", r"train.npy: training mask selects no pixel"),
        ("unlabelled", r"train.npy: training mask selects 1 unlabelled pixel"),
        ("relabel", r"train.npy: .*disagree with the ground truth on 3 of .*number classes"),
        ("overlap", r"test.npy: the test mask overlaps the training mask .*on 2 pixel"),
    ],
)
def test_fixed_split_errors_name_file_and_problem(tmp_path, edit, match):
    labels = synthetic_labels()
    train = np.where(fixed_train_mask(labels), labels, 0)
    test = None
    if edit == "shape":
        train = train[:, :-1]
    elif edit == "empty":
        train = np.zeros_like(train)
    elif edit == "unlabelled":
        y, x = np.argwhere(labels == 0)[0]
        train[y, x] = 1
    elif edit == "relabel":
        train[tuple(np.argwhere(train == 2)[:3].T)] = 3
    elif edit == "overlap":
        t = (labels > 0) & (train == 0)
        t[tuple(np.argwhere(train > 0)[:2].T)] = True
        test = _write(tmp_path / "test.npy", t)
    path = _write(tmp_path / "train.npy", train)
    with pytest.raises(DataError, match=match):
        make_split(labels, "fixed", fixed_train=path, fixed_test=test)


def test_fixed_split_needs_a_training_file():
    with pytest.raises(ParamsError, match="split.fixed.train"):
        make_split(synthetic_labels(), "fixed")
