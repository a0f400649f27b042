"""Train / validation / test splits of a labelled scene, and how much they leak.

Patch models see a P x P window around each training pixel, so under a random pixel split
nearly every test pixel sits inside some training window (HybridSN's 30 % split on Indian
Pines: about 100 %). ``disjoint`` mode assigns whole tiles to train or test and drops a guard
band so that no training window reaches a test pixel. All masks are boolean (H, W) arrays.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.errors import DataError, ParamsError

MODES = ("random", "per_class", "disjoint")

_PENALTY = 1e3
_RESTARTS = 4
_OFFSETS = 8
_MAX_OFFSETS = 64
_GUARD_WEIGHT = 0.1


@dataclass
class Split:
    """Pairwise disjoint boolean (H, W) masks over labelled pixels, and how they were made.

    ``train | val`` is the training pool; ``guard`` is non-empty only in disjoint mode.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    guard: np.ndarray
    mode: str = ""
    seed: int | None = None
    tile_size: int | None = None

    @property
    def train_pool(self) -> np.ndarray:
        return self.train | self.val


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParamsError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_patch_size(patch_size: Any) -> int:
    p = _check_int("patch_size", patch_size, 1)
    if p % 2 == 0:
        raise ParamsError(f"patch_size must be odd, got {p}")
    return p


def _check_fraction(name: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    lo_ok = ok and (value >= 0 if allow_zero else value > 0)
    if not (lo_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ParamsError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _check_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise DataError(f"labels must be a 2-D (H, W) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"labels must hold integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise DataError(f"labels must be >= 0 (0 = unlabelled), found {int(arr.min())}")
    if not (arr > 0).any():
        raise DataError("labels contain no labelled pixel (all 0)")
    return arr.astype(np.int64, copy=False)


def _check_mask(name: str, mask: Any) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise DataError(f"{name} must be a 2-D (H, W) mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _apportion(
    weights: np.ndarray, total: int, rng: np.random.Generator, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """Integers in [lower, upper] summing to ``total``, proportional to ``weights``.

    Largest remainder (sklearn's ``_approximate_mode``) with random tie-breaking, then clipped
    to the bounds and repaired one unit at a time where the quota is furthest off.
    """
    quota = weights * (total / weights.sum())
    alloc = np.floor(quota).astype(np.int64)
    order = rng.permutation(len(weights))
    rest = quota - alloc
    need = total - int(alloc.sum())
    if need > 0:
        ranked = order[np.argsort(-rest[order], kind="stable")]
        alloc[ranked[:need]] += 1
    alloc = np.clip(alloc, lower, upper)
    while (diff := total - int(alloc.sum())) != 0:
        gap = quota - alloc
        if diff > 0:
            ok = alloc < upper
            pick = order[np.argsort(-np.where(ok, gap, -np.inf)[order], kind="stable")[0]]
            alloc[pick] += 1
        else:
            ok = alloc > lower
            pick = order[np.argsort(np.where(ok, gap, np.inf)[order], kind="stable")[0]]
            alloc[pick] -= 1
    return alloc


def _masks_from_indices(shape, train_idx, val_idx, test_idx) -> tuple[np.ndarray, ...]:
    masks = []
    for idx in (train_idx, val_idx, test_idx):
        m = np.zeros(shape[0] * shape[1], dtype=bool)
        m[idx] = True
        masks.append(m.reshape(shape))
    return tuple(masks)


def _carve_val(pools: list[np.ndarray], val_fraction: float, rng: np.random.Generator):
    """Split each class's (already shuffled) pool into train and a stratified val share."""
    counts = np.array([len(p) for p in pools], dtype=np.int64)
    upper = counts - 1
    n_val = min(int(math.floor(val_fraction * counts.sum() + 0.5)), int(upper.sum()))
    if n_val <= 0:
        vals = np.zeros(len(pools), dtype=np.int64)
    else:
        vals = _apportion(counts.astype(float), n_val, rng, np.zeros_like(counts), upper)
    train = [p[v:] for p, v in zip(pools, vals, strict=True)]
    val = [p[:v] for p, v in zip(pools, vals, strict=True)]
    return np.concatenate(train), np.concatenate(val)


def _class_pixels(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    flat = labels.ravel()
    classes = np.unique(flat[flat > 0])
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.concatenate([classes, [classes[-1] + 1]]))
    return classes, [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _pixel_split(labels, pool_sizes, classes, members, rng, val_fraction) -> Split:
    pools, tests = [], []
    for idx, k in zip(members, pool_sizes, strict=True):
        perm = rng.permutation(idx)
        pools.append(perm[:k])
        tests.append(perm[k:])
    train_idx, val_idx = _carve_val(pools, val_fraction, rng)
    train, val, test = _masks_from_indices(labels.shape, train_idx, val_idx, np.concatenate(tests))
    return Split(train, val, test, np.zeros(labels.shape, dtype=bool))


def _random_sizes(classes, members, train_fraction, rng) -> np.ndarray:
    counts = np.array([len(m) for m in members], dtype=np.int64)
    for c, n in zip(classes, counts, strict=True):
        if n < 2:
            raise DataError(
                f"class {int(c)} has only {int(n)} labelled pixel(s); random mode needs at "
                "least 2 per class (one train, one test)"
            )
    n_total = int(counts.sum())
    n_train = int(math.floor(train_fraction * n_total))
    n_cls = len(classes)
    if not n_cls <= n_train <= n_total - n_cls:
        raise DataError(
            f"train_fraction={train_fraction} gives {n_train} of {n_total} labelled pixels for "
            f"training, which cannot give each of the {n_cls} classes a train and a test pixel"
        )
    return _apportion(counts.astype(float), n_train, rng, np.ones_like(counts), counts - 1)


def _per_class_sizes(classes, members, count, min_per_class) -> np.ndarray:
    sizes = []
    for c, m in zip(classes, members, strict=True):
        n = len(m)
        if n < min_per_class + 1:
            raise DataError(
                f"class {int(c)} has only {n} labelled pixel(s); per_class mode needs at least "
                f"min_per_class + 1 = {min_per_class + 1}"
            )
        sizes.append(min(count, max(min_per_class, n // 2)))
    return np.array(sizes, dtype=np.int64)


def _objective(train: np.ndarray, total: np.ndarray, f: float, need_in, need_out) -> np.ndarray:
    """Mean squared deviation of per-class shares from ``f``, plus overall share and penalties.

    ``train`` is (..., C); ``need_in``/``need_out`` flag classes that must have at least one
    pixel selected / left unselected.
    """
    share = train / total
    overall = train.sum(-1) / total.sum()
    missing = (need_in & (train == 0)).sum(-1) + (need_out & (train == total)).sum(-1)
    return ((share - f) ** 2).mean(-1) + (overall - f) ** 2 + _PENALTY * missing


def _search_tiles(counts, f, rng, need_in, need_out, restarts) -> list[tuple[float, np.ndarray]]:
    """Distinct local optima ``(score, selected)`` of tile selections whose shares approach ``f``.

    Each restart draws tiles with probability ``f`` and flips single tiles by steepest
    descent on :func:`_objective`; ``counts`` is the (T, C) tile-by-class pixel count matrix.
    """
    total = counts.sum(0).astype(float)
    keep = total > 0
    counts, total = counts[:, keep].astype(float), total[keep]
    need_in, need_out = need_in[keep], need_out[keep]
    found: dict[bytes, tuple[float, np.ndarray]] = {}
    for _ in range(restarts):
        x = rng.random(len(counts)) < f
        train = counts[x].sum(0)
        score = float(_objective(train, total, f, need_in, need_out))
        while True:
            sign = np.where(x, -1.0, 1.0)[:, None]
            cand = _objective(train + sign * counts, total, f, need_in, need_out)
            best = int(np.argmin(cand))
            if cand[best] >= score - 1e-12:
                break
            x[best] = ~x[best]
            train = train + sign[best] * counts[best]
            score = float(cand[best])
        found.setdefault(x.tobytes(), (score, x.copy()))
    return sorted(found.values(), key=lambda item: item[0])


def default_tile_size(shape: tuple[int, int], patch_size: int) -> int:
    """Default tile side for ``disjoint`` mode: ``max(patch_size // 2 + 1, min(H, W) // 10)``.

    About ten tiles per short side lets the search balance class shares and keep the guard
    band short; a tile wider than the guard band stays meaningful. Indian Pines (145 x 145)
    with P = 25 gets 14-pixel tiles.
    """
    return max(patch_size // 2 + 1, min(shape) // 10)


def dilate_square(mask: np.ndarray, patch_size: int) -> np.ndarray:
    """Pixels inside the P x P window of some True pixel (Chebyshev distance <= P // 2)."""
    m = np.asarray(mask, dtype=np.uint8)
    return ndimage.maximum_filter(m, size=patch_size, mode="constant", cval=0).astype(bool)


def splittable_classes(labels: np.ndarray, patch_size: int) -> dict[int, bool]:
    """Whether each class can have training and test pixels with no test pixel in a window.

    That needs two pixels of the class more than ``patch_size // 2`` apart (Chebyshev), i.e. a
    bounding box longer than that on some side; Indian Pines with P = 25 fails for classes
    1, 7 and 9.
    """
    labels = _check_labels(labels)
    r = _check_patch_size(patch_size) // 2
    out = {}
    for c in np.unique(labels[labels > 0]):
        rows, cols = np.nonzero(labels == c)
        out[int(c)] = bool(max(np.ptp(rows), np.ptp(cols)) > r)
    return out


class _TileModel:
    """Tiling of the labelled pixels with exact, incremental guard-band bookkeeping.

    Tile i *reaches* the labelled pixels within Chebyshev distance r of one of its labelled
    pixels (its own included). With ``cover`` = number of pool tiles reaching a pixel, a
    labelled pixel of a test tile is test if ``cover == 0``, else guard. Pixels sharing tile,
    class and set of reaching tiles behave alike, so the search works on such groups (about
    15x fewer than pixels on Indian Pines) and scores every single-tile flip with two bincounts.
    """

    def __init__(self, labels, cls_index, n_cls, tile, offset, r):
        h, w = labels.shape
        rr, cc = np.nonzero(labels > 0)
        nx = (w - 1 + offset[1]) // tile + 1
        raw = ((rr + offset[0]) // tile) * nx + (cc + offset[1]) // tile
        _, tile_of = np.unique(raw, return_inverse=True)
        self.n_tiles, self.n_cls = int(tile_of.max()) + 1, n_cls
        self.counts = np.zeros((self.n_tiles, n_cls), dtype=np.int64)
        np.add.at(self.counts, (tile_of, cls_index), 1)
        self.pixel_tile = tile_of

        index_map = np.full((h, w), -1, dtype=np.int64)
        index_map[rr, cc] = np.arange(len(rr))
        order = np.argsort(tile_of, kind="stable")
        bounds = np.searchsorted(tile_of[order], np.arange(self.n_tiles + 1))
        src, dst = [], []
        for i in range(self.n_tiles):
            members = order[bounds[i] : bounds[i + 1]]
            y0, x0 = max(rr[members].min() - r, 0), max(cc[members].min() - r, 0)
            y1, x1 = min(rr[members].max() + r + 1, h), min(cc[members].max() + r + 1, w)
            local = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            local[rr[members] - y0, cc[members] - x0] = True
            hit = index_map[y0:y1, x0:x1][dilate_square(local, 2 * r + 1)]
            hit = hit[hit >= 0]
            src.append(np.full(len(hit), i))
            dst.append(hit)
        src, dst = np.concatenate(src), np.concatenate(dst)

        by_pixel = np.lexsort((src, dst))
        src, dst = src[by_pixel], dst[by_pixel]
        start = np.searchsorted(dst, np.arange(len(rr) + 1))
        reach = np.full((len(rr), int(np.diff(start).max())), -1, dtype=np.int64)
        reach[dst, np.arange(len(dst)) - start[dst]] = src
        keys = np.column_stack([tile_of, cls_index, reach])
        order = np.lexsort(keys.T[::-1])
        ranked = keys[order]
        is_new = np.concatenate([[True], (ranked[1:] != ranked[:-1]).any(1)])
        first = order[is_new]
        self.g_n = np.diff(np.flatnonzero(np.concatenate([is_new, [True]]))).astype(float)
        self.g_tile, self.g_cls = tile_of[first], cls_index[first]
        g_reach = reach[first]
        self.src = g_reach[g_reach >= 0]
        self.dst = np.nonzero(g_reach >= 0)[0]
        by_tile = np.argsort(self.src, kind="stable")
        self.src, self.dst = self.src[by_tile], self.dst[by_tile]
        self.bounds = np.searchsorted(self.src, np.arange(self.n_tiles + 1))
        self.key = self.src * n_cls + self.g_cls[self.dst]
        self.own_key = self.g_tile * n_cls + self.g_cls
        self.size = self.n_tiles * n_cls

    def state(self, x: np.ndarray):
        """Per-class pool and test counts and the group cover counts for pool tiles ``x``."""
        cover = np.bincount(self.dst, weights=x[self.src], minlength=len(self.g_n)).astype(int)
        pool = self.counts[x].sum(0)
        is_test = ~x[self.g_tile] & (cover == 0)
        test = np.bincount(self.g_cls, weights=self.g_n * is_test, minlength=self.n_cls)
        return pool, test, cover

    def flip(self, x: np.ndarray, cover: np.ndarray, i: int) -> None:
        """Flip tile i in place, updating ``cover``."""
        cover[self.dst[self.bounds[i] : self.bounds[i + 1]]] += -1 if x[i] else 1
        x[i] = ~x[i]

    def flips(self, x, pool, test, cover):
        """Pool and test counts (T, C) after flipping each tile alone.

        Adding tile i loses the uncovered test pixels it reaches (its own included); removing
        it frees the test-tile pixels only it covers, and its own pixels covered only by itself.
        """
        in_test_tile = ~x[self.g_tile]
        lose = self.g_n * (in_test_tile & (cover == 0))
        free = self.g_n * (in_test_tile & (cover == 1))
        weight = np.where(x[self.src], free[self.dst], lose[self.dst])
        change = np.bincount(self.key, weights=weight, minlength=self.size)
        own = np.bincount(self.own_key, weights=self.g_n * (cover == 1), minlength=self.size)
        change, own = change.reshape(self.n_tiles, -1), own.reshape(self.n_tiles, -1)
        grow = x[:, None]
        new_pool = pool + np.where(grow, -self.counts, self.counts)
        new_test = test + np.where(grow, change + own, -change)
        return new_pool, new_test


def _disjoint_objective(pool, test, total, f, need, guard_weight):
    """Score of (..., C) pool and test counts: lower is better.

    Squared deviation of per-class (mean) and overall shares pool / (pool + test) from ``f``,
    ``guard_weight`` x the share of labelled pixels lost to the guard band, and a penalty per
    class in ``need`` without pool or test pixels.
    """
    kept = pool + test
    share = np.where(kept > 0, pool / np.maximum(kept, 1), 0.0)
    overall = pool.sum(-1) / np.maximum(kept.sum(-1), 1)
    lost = 1.0 - kept.sum(-1) / total.sum()
    missing = (need & ((pool == 0) | (test == 0))).sum(-1)
    return (
        ((share - f) ** 2).mean(-1)
        + (overall - f) ** 2
        + guard_weight * lost
        + (_PENALTY * missing)
    )


def _search_disjoint(model, f, need, rng, restarts):
    """Best ``(score, pool tiles)`` over random restarts of steepest-descent tile flips."""
    total = model.counts.sum(0).astype(float)
    best = None
    for _ in range(restarts):
        x = rng.random(model.n_tiles) < f
        pool, test, cover = model.state(x)
        score = float(_disjoint_objective(pool, test, total, f, need, _GUARD_WEIGHT))
        while True:
            new_pool, new_test = model.flips(x, pool, test, cover)
            cand = _disjoint_objective(new_pool, new_test, total, f, need, _GUARD_WEIGHT)
            i = int(np.argmin(cand))
            if cand[i] >= score - 1e-12:
                break
            pool, test = new_pool[i], new_test[i]
            model.flip(x, cover, i)
            score = float(cand[i])
        if best is None or score < best[0]:
            best = (score, x.copy())
    return best


def _disjoint_split(labels, classes, patch_size, train_fraction, val_fraction, tile, rng):
    h, w = labels.shape
    labelled = labels > 0
    n_cls = len(classes)
    r = patch_size // 2
    cls_index = np.searchsorted(classes, labels[labelled])
    ok = splittable_classes(labels, patch_size)
    need = np.array([ok[int(c)] for c in classes])
    if not need.all():
        warnings.warn(
            f"classes {[int(c) for c in classes[~need]]} span no more than patch_size // 2 = "
            f"{r} pixels, so no leak-free split gives them both training and test pixels",
            UserWarning,
            stacklevel=3,
        )
    best = None
    for attempt in range(_MAX_OFFSETS):
        if attempt >= _OFFSETS and best[0] < _PENALTY:
            break
        offset = tuple(int(v) for v in rng.integers(0, tile, size=2))
        model = _TileModel(labels, cls_index, n_cls, tile, offset, r)
        score, x = _search_disjoint(model, train_fraction, need, rng, _RESTARTS)
        if best is None or score < best[0]:
            best = (score, model, x)
    _, model, x = best

    pool = np.zeros((h, w), dtype=bool)
    pool[labelled] = x[model.pixel_tile]
    test_area = labelled & ~pool
    near = dilate_square(pool, patch_size)
    guard, test = test_area & near, test_area & ~near
    n_pool = np.bincount(cls_index[pool[labelled]], minlength=n_cls)
    n_test = np.bincount(cls_index[test[labelled]], minlength=n_cls)
    lacking = need & ((n_pool == 0) | (n_test == 0))
    if lacking.any():
        raise DataError(
            f"disjoint mode found no tile assignment giving class(es) "
            f"{[int(c) for c in classes[lacking]]} both training pixels and (after the "
            f"{r}-pixel guard band) test pixels with tile_size={tile}; try a smaller "
            "tile_size or another seed"
        )

    val = np.zeros((h, w), dtype=bool)
    if val_fraction > 0:
        pool_tiles = np.flatnonzero(x)
        pool_counts = model.counts[pool_tiles]
        pool_total = pool_counts.sum(0)
        has = pool_total > 0
        no_need = np.zeros(n_cls, dtype=bool)
        for _, v in _search_tiles(pool_counts, val_fraction, rng, no_need, has, _RESTARTS):
            if v.any() and (pool_counts[v].sum(0)[has] < pool_total[has]).all():
                val[labelled] = np.isin(model.pixel_tile, pool_tiles[v])
                break
    return Split(pool & ~val, val, test, guard)


def make_split(
    labels: np.ndarray,
    mode: str,
    *,
    seed: int = 0,
    train_fraction: float = 0.3,
    per_class_count: int = 50,
    min_per_class: int = 5,
    val_fraction: float = 0.1,
    patch_size: int = 25,
    tile_size: int | None = None,
) -> Split:
    """Split the labelled pixels of ``labels`` (0 = unlabelled) into train, val, test and guard.

    Modes, all deterministic for a given ``seed`` (``np.random.default_rng(seed)``):

    - ``random``: stratified random pixels. The training pool (train + val) has
      ``floor(train_fraction * n_labelled)`` pixels, as sklearn's stratified
      ``train_test_split(train_size=train_fraction)`` (3074 for Indian Pines at 0.3), shared
      over classes by largest remainder, each class keeping >= 1 pool and >= 1 test pixel.
    - ``per_class``: a class with n pixels puts ``min(per_class_count, max(min_per_class,
      n // 2))`` in the pool: ``per_class_count`` when n >= 2 * per_class_count, else half the
      class (at least ``min_per_class``), so every class keeps test pixels; a class with
      n < ``min_per_class + 1`` pixels is an error.
    - ``disjoint``: the scene is cut into square tiles of side ``tile_size`` (default
      :func:`default_tile_size`) on a grid with a seed-drawn offset, and whole tiles go to the
      pool. Labelled pixels of the other tiles within Chebyshev distance ``patch_size // 2`` of
      a pool pixel go to ``guard``, the rest to ``test``, so no pool pixel's window holds a
      test pixel (leakage 0). The tile assignment minimises the squared deviation of each
      class's share pool / (pool + test) (and the overall share) from ``train_fraction``,
      plus 0.1 x the share of labelled pixels lost to the guard band, by steepest-descent tile
      flips from random starts over several grid offsets. Every class gets >= 1 pool and >= 1
      test pixel, else DataError naming it; classes spanning no more than ``patch_size // 2``
      pixels cannot (see :func:`splittable_classes`): they are exempt, with a UserWarning.
      Validation is a set of whole pool tiles.

    ``val_fraction`` of the pool moves to ``val`` (stratified by class in random/per_class
    modes, whole tiles in disjoint mode), each class keeping >= 1 training pixel.
    """
    if mode not in MODES:
        raise ParamsError(f"mode must be one of {MODES}, got {mode!r}")
    seed = _check_int("seed", seed, 0)
    train_fraction = _check_fraction("train_fraction", train_fraction)
    val_fraction = _check_fraction("val_fraction", val_fraction, allow_zero=True)
    per_class_count = _check_int("per_class_count", per_class_count, 1)
    min_per_class = _check_int("min_per_class", min_per_class, 1)
    patch_size = _check_patch_size(patch_size)
    if tile_size is not None:
        tile_size = _check_int("tile_size", tile_size, 1)
    labels = _check_labels(labels)
    rng = np.random.default_rng(seed)
    classes, members = _class_pixels(labels)

    if mode == "disjoint":
        tile = tile_size if tile_size is not None else default_tile_size(labels.shape, patch_size)
        split = _disjoint_split(
            labels, classes, patch_size, train_fraction, val_fraction, tile, rng
        )
        split.tile_size = tile
    else:
        if mode == "random":
            sizes = _random_sizes(classes, members, train_fraction, rng)
        else:
            sizes = _per_class_sizes(classes, members, per_class_count, min_per_class)
        split = _pixel_split(labels, sizes, classes, members, rng, val_fraction)
    split.mode, split.seed = mode, seed
    return split


def leakage_share(train_pool: np.ndarray, test: np.ndarray, patch_size: int) -> float:
    """Share (0..1) of test pixels inside the P x P window of some training-pool pixel.

    The window of a pool pixel (r, c) covers rows r - P//2 .. r + P//2 (same for columns);
    computed by one square dilation. An empty test set leaks nothing: 0.0.
    """
    p = _check_patch_size(patch_size)
    pool, test = _check_mask("train_pool", train_pool), _check_mask("test", test)
    if pool.shape != test.shape:
        raise DataError(f"train_pool shape {pool.shape} differs from test shape {test.shape}")
    n_test = int(test.sum())
    if n_test == 0:
        return 0.0
    return float((dilate_square(pool, p) & test).sum() / n_test)


def _class_name(class_names: Any, label: int) -> str:
    if class_names is None:
        return f"class_{label}"
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, f"class_{label}"))
    if isinstance(class_names, Sequence) and 0 < label <= len(class_names):
        return str(class_names[label - 1])
    return f"class_{label}"


def split_summary(
    labels: np.ndarray, split: Split, patch_size: int, class_names: Any = None
) -> dict:
    """JSON-ready counts per mask and class, plus the leakage share of the split.

    ``class_names`` is a mapping label -> name or a sequence whose item i names label i + 1.
    """
    labels = _check_labels(labels)
    p = _check_patch_size(patch_size)
    masks = {k: _check_mask(k, getattr(split, k)) for k in ("train", "val", "test", "guard")}
    for k, m in masks.items():
        if m.shape != labels.shape:
            raise DataError(f"split.{k} shape {m.shape} differs from labels shape {labels.shape}")
    pool = masks["train"] | masks["val"]
    per_class = []
    for c in np.unique(labels[labels > 0]):
        in_c = labels == c
        row = {"label": int(c), "name": _class_name(class_names, int(c)), "total": int(in_c.sum())}
        row.update({k: int((m & in_c).sum()) for k, m in masks.items()})
        per_class.append(row)
    share = leakage_share(pool, masks["test"], p)
    counts = {k: int(m.sum()) for k, m in masks.items()}
    counts["train_pool"] = int(pool.sum())
    return {
        "mode": split.mode,
        "seed": split.seed,
        "patch_size": p,
        "counts": counts,
        "per_class": per_class,
        "leakage_share": share,
        "leakage_percent": 100.0 * share,
    }
