"""Spatial block k-fold: every labelled pixel tested once, whole-block regions, even classes."""

import json
import time

import numpy as np
import pytest

from pipeline.data.kfold import (
    BlockFolds,
    assign_folds,
    block_grid,
    default_block_size,
    kfold_summary,
)
from pipeline.errors import DataError, ParamsError

K = 5


def clustered_labels(h=60, w=66, seed=0) -> np.ndarray:
    """Six classes in contiguous fields of unequal size, a tiny one, holes and an empty corner."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), dtype=np.int64)
    labels[: h // 2, : w // 3] = 1
    labels[: h // 2, w // 3 :] = 2
    labels[h // 2 :, : w // 2] = 3
    labels[h // 2 :, w // 2 :] = 4
    labels[5:20, 40:60] = 5
    labels[37:40, 8:11] = 6
    labels[rng.random((h, w)) < 0.25] = 0
    labels[h - 13 :, w - 13 :] = 0
    return labels


def sets_of_fold(folds: BlockFolds, k: int, labels: np.ndarray):
    return folds.train(k, labels), folds.val(k, labels), folds.test(k, labels)


def regions_of_fold(folds: BlockFolds, k: int):
    return folds.train_region(k), folds.val_region(k), folds.test_region(k)


def spread_score(fold_of_pixel: np.ndarray, labels: np.ndarray, n_folds: int) -> float:
    """Mean over classes of the squared relative deviation of fold counts from total / K."""
    out = []
    for c in np.unique(labels[labels > 0]):
        per = np.bincount(fold_of_pixel[labels == c], minlength=n_folds)
        ideal = per.sum() / n_folds
        out.append((((per - ideal) / ideal) ** 2).sum())
    return float(np.mean(out))


def partition(folds: BlockFolds) -> frozenset:
    """The blocks of each fold, ignoring which number the fold has."""
    return frozenset(frozenset(np.flatnonzero(folds.block_fold == k)) for k in range(K))


@pytest.fixture(scope="module")
def labels():
    return clustered_labels()


@pytest.fixture(scope="module")
def folds(labels):
    return assign_folds(labels, K, block_size=6, seed=0, val_fraction=0.1)


def test_every_labelled_pixel_is_tested_in_exactly_one_fold(labels, folds):
    times_tested = sum(folds.test(k, labels).astype(int) for k in range(K))
    assert np.array_equal(times_tested, (labels > 0).astype(int))
    fold_map = folds.fold_map(labels)
    assert np.array_equal(fold_map == -1, labels == 0)
    for k in range(K):
        assert np.array_equal(fold_map == k, folds.test(k, labels))
        assert folds.test(k, labels).any()


def test_masks_of_a_fold_are_disjoint_and_cover_the_labelled_pixels(labels, folds):
    for k in range(K):
        train, val, test = sets_of_fold(folds, k, labels)
        assert not (train & val).any() and not (train & test).any() and not (val & test).any()
        assert np.array_equal(train | val | test, labels > 0)
        assert train.any() and val.any()


def test_regions_partition_the_scene_into_whole_blocks(labels, folds):
    h, w = labels.shape
    assert np.array_equal(folds.blocks, block_grid((h, w), 6))
    assert folds.blocks[0, 0] == 0 and folds.blocks[5, 5] == 0 and folds.blocks[6, 6] != 0
    region = folds.region_map()
    assert region.min() >= 0 and region.max() < K
    for k in range(K):
        parts = regions_of_fold(folds, k)
        assert np.array_equal(sum(p.astype(int) for p in parts), np.ones((h, w), dtype=int))
        for part in (*parts, region == k):
            inside = np.bincount(folds.blocks.ravel(), weights=part.ravel())
            size = np.bincount(folds.blocks.ravel())
            assert set(np.unique(inside / size)) <= {0.0, 1.0}
        for mask, part in zip(sets_of_fold(folds, k, labels), parts, strict=True):
            assert np.array_equal(mask, part & (labels > 0))


def test_blocks_without_labelled_pixels_get_a_fold_too():
    labels = clustered_labels(60, 60)
    labels[:, 30:] = 0
    folds = assign_folds(labels, K, block_size=6, seed=0)
    empty = np.setdiff1d(np.arange(len(folds.block_fold)), folds.blocks[labels > 0])
    assert len(empty) >= 50
    region = folds.region_map()
    assert region.min() >= 0 and region.max() < K
    area = np.bincount(region.ravel(), minlength=K)
    assert area.max() - area.min() <= 2 * 36


def test_edge_blocks_may_be_smaller():
    grid = block_grid((10, 7), 4)
    assert grid.max() == 5
    assert np.bincount(grid.ravel()).tolist() == [16, 12, 16, 12, 8, 6]


def test_validation_blocks_lie_outside_the_test_fold_and_hold_about_val_fraction(labels, folds):
    for k in range(K):
        val_ids = folds.val_blocks[k]
        assert len(val_ids) and not (folds.block_fold[val_ids] == k).any()
        assert not (folds.val_region(k) & folds.test_region(k)).any()
        train, val, _ = sets_of_fold(folds, k, labels)
        pool = train | val
        assert 0.07 <= val.sum() / pool.sum() <= 0.13
        for c in (1, 2, 3, 4):
            in_c = labels == c
            assert 0.03 <= (val & in_c).sum() / (pool & in_c).sum() <= 0.2


def test_val_fraction_zero_gives_no_validation(labels):
    folds = assign_folds(labels, K, block_size=6, seed=0, val_fraction=0)
    for k in range(K):
        assert len(folds.val_blocks[k]) == 0 and not folds.val_region(k).any()
        train, _, test = sets_of_fold(folds, k, labels)
        assert np.array_equal(train | test, labels > 0)


def test_each_class_keeps_a_training_pixel_when_validation_would_take_it_all():
    """With val_fraction 0.9 a class inside one block costs least wholly in validation."""
    labels = clustered_labels()
    labels[labels == 6] = 1
    labels[13:16, 25:28] = 6
    labels[40:43, 49:52] = 7
    folds = assign_folds(labels, K, block_size=6, seed=0, val_fraction=0.9)
    for k in range(K):
        train, val, _ = sets_of_fold(folds, k, labels)
        for c in np.unique(labels[(train | val)]):
            assert (train & (labels == c)).any(), (k, c)
        assert val.sum() > 0.5 * (train | val).sum()


def test_assignment_is_deterministic_for_a_seed_and_changes_with_it(labels, folds):
    again = assign_folds(labels, K, block_size=6, seed=0, val_fraction=0.1)
    assert np.array_equal(again.block_fold, folds.block_fold)
    for a, b in zip(again.val_blocks, folds.val_blocks, strict=True):
        assert np.array_equal(a, b)
    others = [assign_folds(labels, K, block_size=6, seed=s) for s in (1, 2, 3)]
    assert len({partition(f) for f in [folds, *others]}) >= 3
    assert all(f.seed == s for f, s in zip(others, (1, 2, 3), strict=True))


def test_class_spread_beats_round_robin_and_random_blocks(labels, folds):
    spanning = np.where(labels == 6, 0, labels)
    blocks = folds.blocks
    n_blocks = int(blocks.max()) + 1
    ours = spread_score(folds.fold_map(labels), spanning, K)
    round_robin = spread_score(blocks % K, spanning, K)
    rng = np.random.default_rng(0)
    random = [spread_score(rng.integers(0, K, n_blocks)[blocks], spanning, K) for _ in range(20)]
    assert ours < 0.2 * round_robin
    assert ours < 0.2 * min(random)
    sizes = np.bincount(folds.fold_map(labels)[labels > 0], minlength=K)
    assert sizes.max() / sizes.min() < 1.05


def test_no_single_move_or_swap_of_a_block_improves_the_spread(labels, folds):
    """The documented score: mean over classes of the squared relative deviations of the fold
    counts from total / K, plus the same for fold sizes."""
    fold_map = folds.fold_map(labels)
    blocks = np.unique(folds.blocks[labels > 0])
    counts = np.stack(
        [np.bincount(labels[folds.blocks == b], minlength=7)[1:] for b in blocks]
    ).astype(float)
    counts = np.column_stack([counts, counts.sum(1)])
    ideal = counts.sum(0) / K

    def score(group):
        dev = (np.stack([counts[group == k].sum(0) for k in range(K)]) - ideal) / ideal
        return (dev[:, :-1] ** 2).sum(0).mean() + (dev[:, -1] ** 2).sum()

    group = folds.block_fold[blocks]
    assert np.array_equal(
        group[np.searchsorted(blocks, folds.blocks[labels > 0])], fold_map[labels > 0]
    )
    best = score(group)
    for i in range(len(blocks)):
        for k in range(K):
            trial = group.copy()
            trial[i] = k
            if len(np.unique(trial)) == K:
                assert score(trial) >= best - 1e-9
        for j in np.flatnonzero(group != group[i]):
            trial = group.copy()
            trial[i], trial[j] = group[j], group[i]
            assert score(trial) >= best - 1e-9


def test_a_class_in_one_block_stays_in_one_fold(labels, folds):
    (c6_fold,) = np.unique(folds.fold_map(labels)[labels == 6])
    summary = kfold_summary(labels, folds)
    row = next(r for r in summary["spread"] if r["label"] == 6)
    assert row["folds_with_class"] == 1 and row["max_share"] == 1.0
    for k in range(K):
        train, val, test = sets_of_fold(folds, k, labels)
        assert (test & (labels == 6)).any() == (k == c6_fold)


def test_exactly_as_many_labelled_blocks_as_folds_gives_each_fold_one():
    labels = np.zeros((30, 30), dtype=np.int64)
    for i, (r, c) in enumerate([(0, 0), (0, 12), (12, 0), (24, 24), (12, 18)]):
        labels[r : r + 6 - i, c : c + 6] = i + 1
    folds = assign_folds(labels, K, block_size=6, seed=0, val_fraction=0.5)
    for k in range(K):
        assert folds.test(k, labels).sum() > 0
        assert folds.train(k, labels).any()


def test_summary_counts_add_up_and_serialise(labels, folds):
    names = ["corn", "soy", "wood", "grass", "hay", "oats"]
    summary = kfold_summary(labels, folds, class_names=names)
    json.dumps(summary)
    assert summary["block_size"] == 6 and summary["n_folds"] == K and summary["seed"] == 0
    assert summary["n_blocks"] == 110 and summary["n_labelled_blocks"] < 110
    totals = {c: int((labels == c).sum()) for c in range(1, 7)}
    test_sum = dict.fromkeys(totals, 0)
    for k, fold in enumerate(summary["folds"]):
        assert fold["counts"]["test"] == int(folds.test(k, labels).sum())
        assert fold["val_blocks"] == len(folds.val_blocks[k]) and fold["test_blocks"] > 0
        for row in fold["per_class"]:
            assert row["name"] == names[row["label"] - 1]
            assert row["train"] + row["val"] + row["test"] == row["total"] == totals[row["label"]]
            test_sum[row["label"]] += row["test"]
    assert test_sum == totals
    for row in summary["spread"]:
        assert sum(row["per_fold"]) == row["total"]
        assert row["min_share"] == min(row["per_fold"]) / row["total"]
        assert row["max_share"] == max(row["per_fold"]) / row["total"]
        assert row["min_share"] <= 1 / K <= row["max_share"]


def test_default_block_size_is_the_patch_size():
    assert default_block_size(25) == 25
    labels = clustered_labels()
    assert assign_folds(labels, K, patch_size=7).block_size == 7
    with pytest.raises(ParamsError, match="patch.size"):
        default_block_size(0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"n_folds": 1}, "split.folds"),
        ({"n_folds": 2.0}, "split.folds"),
        ({"block_size": 0}, "split.block_size"),
        ({"block_size": 61}, "split.block_size"),
        ({"seed": -1}, "split.seed"),
        ({"val_fraction": 1.0}, "split.val_fraction"),
        ({"n_folds": 40, "block_size": 12}, "split.folds"),
    ],
)
def test_bad_parameters_name_their_key(labels, kwargs, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        assign_folds(labels, **({"block_size": 6} | kwargs))


def test_too_few_labelled_blocks_names_folds_and_block_size():
    labels = np.zeros((40, 40), dtype=np.int64)
    labels[:10, :10] = 1
    with pytest.raises(ParamsError, match=r"split\.folds.*split\.block_size"):
        assign_folds(labels, K, block_size=5)


def test_no_labelled_pixels_is_a_data_error():
    with pytest.raises(DataError, match="no labelled pixel"):
        assign_folds(np.zeros((20, 20), dtype=np.int64), K, block_size=4)


def test_folds_are_frozen_and_checked(folds):
    with pytest.raises(AttributeError):
        folds.seed = 1
    with pytest.raises(ValueError):
        folds.block_fold[0] = 1
    bad_val = list(folds.val_blocks)
    bad_val[0] = np.flatnonzero(folds.block_fold == 0)[:1]
    with pytest.raises(DataError, match="fold 0"):
        BlockFolds(6, 0, K, 0.1, folds.blocks, folds.block_fold, tuple(bad_val))
    with pytest.raises(ValueError, match="fold"):
        folds.test_region(K)


def test_fast_on_a_pavia_sized_scene():
    """145 x 145 well under a second; 610 x 340 (Pavia University) a few seconds at most."""
    small = clustered_labels(145, 145, seed=1)
    big = clustered_labels(610, 340, seed=2)
    start = time.perf_counter()
    assign_folds(small, K, block_size=25)
    assert time.perf_counter() - start < 2.0
    start = time.perf_counter()
    assign_folds(big, K, block_size=25)
    assert time.perf_counter() - start < 10.0
