"""Train / validation / test splits of a labelled scene, and how much they leak.

Patch models see a P x P window around each training pixel, so under a random pixel split
nearly every test pixel sits inside some training window (HybridSN's 30 % split on Indian
Pines: about 100 %). ``disjoint`` mode assigns whole tiles to train, validation or test and drops
a guard band so that no training window reaches a validation or test pixel (``guard: centre``)
or shares a pixel with their windows (``guard: window``). ``fixed`` mode reads a published split
from mask files. A class left without training or test pixels is never scored: its test pixels
move to ``excluded`` and it is listed in ``Split.not_scored``. All masks are boolean (H, W).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.data.kfold import assign_folds, check_labels, kfold_summary
from pipeline.errors import DataError, ParamsError

MODES = ("random", "per_class", "disjoint", "kfold", "fixed")
GUARDS = ("centre", "window")

_PENALTY = 1e3
_RESTARTS = 4
_OFFSETS = 8
_MAX_OFFSETS = 64
_GUARD_WEIGHT = 0.1
_MASK_SUFFIXES_TIFF = (".tif", ".tiff")


@dataclass
class Split:
    """Pairwise disjoint boolean (H, W) masks covering the labelled pixels, and how they were made.

    ``train | val`` is the training pool; ``guard`` (disjoint mode) holds pixels dropped because a
    training window reaches them; ``excluded`` holds the other labelled pixels no set uses: the
    validation and test pixels of the classes in ``not_scored`` (no training or no test pixels),
    which no metric may score, and in fixed mode the pixels in neither mask.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    guard: np.ndarray
    excluded: np.ndarray | None = None
    mode: str = ""
    seed: int | None = None
    tile_size: int | None = None
    guard_mode: str = "centre"
    not_scored: list[int] = field(default_factory=list)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    """k-fold: ``folds`` (fold of each labelled pixel, -1 unlabelled), ``blocks`` (block id of
    every pixel) and ``view_train`` / ``view_val`` / ``view_test`` (pixels each input shows)."""
    info: dict[str, Any] = field(default_factory=dict)
    """k-fold: fold, folds, block size, context and the per-fold counts, for split.json."""

    def __post_init__(self):
        if self.excluded is None:
            self.excluded = np.zeros_like(self.train)

    @property
    def train_pool(self) -> np.ndarray:
        return self.train | self.val


def guard_radius(guard: str, patch_size: int) -> int:
    """Chebyshev distance within which a pixel counts as reached by a training pixel.

    ``centre``: P // 2, the pixel lies inside some training patch. ``window``: P - 1, its own
    P x P patch shares at least one pixel with some training patch.
    """
    if guard not in GUARDS:
        raise ParamsError(f"guard must be one of {GUARDS}, got {guard!r}")
    p = _check_patch_size(patch_size)
    return p // 2 if guard == "centre" else p - 1


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


def default_tile_size(shape: tuple[int, int], patch_size: int) -> int:
    """Default tile side for ``disjoint`` mode: ``max(patch_size // 2 + 1, min(H, W) // 10)``.

    About ten tiles per short side lets the search balance class shares and keep the guard
    band short; a tile wider than the centre guard band stays meaningful. Indian Pines
    (145 x 145) with P = 25 gets 14-pixel tiles (with both guards: 25-pixel tiles left class 8
    or 13 without test pixels under the ``window`` guard on seeds 0 and 1).
    """
    return max(patch_size // 2 + 1, min(shape) // 10)


def dilate_square(mask: np.ndarray, patch_size: int) -> np.ndarray:
    """Pixels inside the P x P window of some True pixel (Chebyshev distance <= P // 2)."""
    m = np.asarray(mask, dtype=np.uint8)
    return ndimage.maximum_filter(m, size=patch_size, mode="constant", cval=0).astype(bool)


def splittable_classes(
    labels: np.ndarray, patch_size: int, guard: str = "centre"
) -> dict[int, bool]:
    """Whether each class can have training and test pixels farther apart than the guard radius.

    That needs two pixels of the class more than r apart (Chebyshev), i.e. a bounding box
    longer than r on some side; Indian Pines with P = 25 fails for classes 1, 7 and 9.
    """
    labels = check_labels(labels)
    r = guard_radius(guard, patch_size)
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
    With r = 0 a tile reaches only its own pixels: a plain selection of tiles, no guard band.
    """

    def __init__(self, labels, cls_index, n_cls, tile, offset, r):
        h, w = labels.shape
        rr, cc = np.nonzero(labels > 0)
        self.rr, self.cc = rr, cc
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


def _objective(sel, rest, total, f, need_in, need_out, guard_weight):
    """Score of (..., C) selected and remaining (kept) counts: lower is better.

    Squared deviation of per-class (mean) and overall shares sel / (sel + rest) from ``f``,
    ``guard_weight`` x the share of pixels lost to the guard band, and ``_PENALTY`` x the
    weights ``need_in`` / ``need_out`` of classes left with no selected / no remaining pixel.
    """
    kept = sel + rest
    share = np.where(kept > 0, sel / np.maximum(kept, 1), 0.0)
    overall = sel.sum(-1) / np.maximum(kept.sum(-1), 1)
    lost = 1.0 - kept.sum(-1) / total.sum()
    missing = (need_in * (sel == 0)).sum(-1) + (need_out * (rest == 0)).sum(-1)
    return (
        ((share - f) ** 2).mean(-1)
        + (overall - f) ** 2
        + guard_weight * lost
        + (_PENALTY * missing)
    )


def _search(model: _TileModel, f, need_in, need_out, rng, restarts=_RESTARTS):
    """Best ``(score, selected tiles)`` over random restarts of steepest-descent tile flips.

    The one tile-assignment search: used for training tiles (with the guard band) and for
    validation tiles among the held-out pixels (``model`` built with r = 0).
    """
    total = model.counts.sum(0).astype(float)
    weight = _GUARD_WEIGHT
    best = None
    for _ in range(restarts):
        x = rng.random(model.n_tiles) < f
        sel, rest, cover = model.state(x)
        score = float(_objective(sel, rest, total, f, need_in, need_out, weight))
        while True:
            new_sel, new_rest = model.flips(x, sel, rest, cover)
            cand = _objective(new_sel, new_rest, total, f, need_in, need_out, weight)
            i = int(np.argmin(cand))
            if cand[i] >= score - 1e-12:
                break
            sel, rest = new_sel[i], new_rest[i]
            model.flip(x, cover, i)
            score = float(cand[i])
        if best is None or score < best[0]:
            best = (score, x.copy())
    return best


def _assign(labels, classes, tile, offset, r, f_train, f_val, need, rng):
    """Train tiles with a guard band of radius r, then val tiles among the held-out pixels.

    Returns ``(score, train, held, val)`` boolean (H, W) masks: ``held`` are the labelled pixels
    outside the training tiles and farther than r from every training pixel; ``val`` is part of
    ``held``. A class missing its test share costs twice a class missing validation pixels.
    """
    n_cls = len(classes)
    labelled = labels > 0
    cls_index = np.searchsorted(classes, labels[labelled])
    model = _TileModel(labels, cls_index, n_cls, tile, offset, r)
    need_f = need.astype(float)
    score, x = _search(model, f_train, need_f, need_f, rng)
    train = np.zeros(labels.shape, dtype=bool)
    train[labelled] = x[model.pixel_tile]
    held = labelled & ~train & ~dilate_square(train, 2 * r + 1)
    val = np.zeros(labels.shape, dtype=bool)
    if f_val > 0 and held.any():
        held_labels = np.where(held, labels, 0)
        held_n = np.bincount(np.searchsorted(classes, labels[held]), minlength=n_cls)
        sub_cls = np.searchsorted(classes, held_labels[held_labels > 0])
        sub = _TileModel(held_labels, sub_cls, n_cls, tile, offset, 0)
        need_val = (need & (held_n >= 2)).astype(float)
        need_test = 2.0 * (need & (held_n >= 1))
        s2, y = _search(sub, f_val, need_val, need_test, rng)
        score += s2
        val[sub.rr, sub.cc] = y[sub.pixel_tile]
    return score, train, held, val


def _disjoint_split(labels, classes, patch_size, train_fraction, val_fraction, tile, guard, rng):
    r = guard_radius(guard, patch_size)
    ok = splittable_classes(labels, patch_size, guard)
    need = np.array([ok[int(c)] for c in classes])
    if not need.all():
        warnings.warn(
            f"classes {[int(c) for c in classes[~need]]} span no more than the {guard} guard "
            f"radius {r} pixels, so no guarded split gives them both training and test pixels: "
            "they are not scored",
            UserWarning,
            stacklevel=3,
        )
    f_train = train_fraction * (1.0 - val_fraction)
    held_val = train_fraction * val_fraction
    f_val = held_val / (held_val + 1.0 - train_fraction)
    best = None
    for attempt in range(_MAX_OFFSETS):
        if attempt >= _OFFSETS and best[0] < _PENALTY:
            break
        offset = tuple(int(v) for v in rng.integers(0, tile, size=2))
        found = _assign(labels, classes, tile, offset, r, f_train, f_val, need, rng)
        if best is None or found[0] < best[0]:
            best = found
    _, train, held, val = best
    test = held & ~val
    guard_mask = (labels > 0) & ~train & ~held
    lacking = [
        int(c)
        for c, n in zip(classes, need, strict=True)
        if n and not ((train & (labels == c)).any() and (test & (labels == c)).any())
    ]
    if lacking:
        warnings.warn(
            f"disjoint mode found no tile assignment giving class(es) {lacking} both training "
            f"pixels and (after the {r}-pixel {guard} guard band) test pixels with "
            f"tile_size={tile}: they are not scored; a smaller tile_size or another seed may help",
            UserWarning,
            stacklevel=3,
        )
    no_val = [
        int(c) for c, n in zip(classes, need, strict=True) if n and not (val & (labels == c)).any()
    ]
    if val_fraction > 0 and no_val:
        warnings.warn(
            f"classes {no_val} get no validation pixels in this disjoint split", stacklevel=3
        )
    return Split(train, val, test, guard_mask)


def read_mask_file(path: str | Path) -> np.ndarray:
    """The 2-D array in a .npy, .mat (key auto-detected as for scenes) or GeoTIFF file."""
    from pipeline.data.loaders import load_array

    path = Path(path)
    if path.suffix.lower() not in _MASK_SUFFIXES_TIFF:
        return load_array(path, ndim=2)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    import tifffile

    try:
        arr = np.asarray(tifffile.imread(path))
    except Exception as e:  # tifffile raises many types for damaged files
        raise DataError(f"{path}: cannot read GeoTIFF: {e}") from e
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-band 2-D raster, got shape {arr.shape}")
    return arr


def _fixed_member(source, labels: np.ndarray, name: str) -> np.ndarray:
    """Pixels a fixed-split mask or label map selects, checked against the ground truth."""
    where = str(source) if isinstance(source, (str, Path)) else name
    arr = read_mask_file(source) if isinstance(source, (str, Path)) else np.asarray(source)
    if arr.shape != labels.shape:
        raise DataError(
            f"{where}: {name} has shape {arr.shape}, the scene's ground truth (after "
            f"dataset.crop) has {labels.shape}"
        )
    if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise DataError(f"{where}: {name} must hold finite numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise DataError(f"{where}: {name} has non-integral values; expected a mask or label map")
    member = arr != 0
    if not member.any():
        raise DataError(f"{where}: {name} selects no pixel (all zero)")
    unlabelled = int((member & (labels == 0)).sum())
    if unlabelled:
        raise DataError(
            f"{where}: {name} selects {unlabelled} unlabelled pixel(s) (ground truth 0)"
        )
    values = np.unique(arr[member])
    if not np.array_equal(values, [1]) and arr.dtype.kind != "b":
        disagree = int((member & (arr != labels)).sum())
        if disagree:
            raise DataError(
                f"{where}: {name} is a label map whose labels disagree with the ground truth on "
                f"{disagree} of {int(member.sum())} pixels (official split maps sometimes number "
                "classes differently: renumber it, or pass a 0/1 mask)"
            )
    return member


def _fixed_split(labels, classes, members, fixed_train, fixed_test, val_fraction, rng) -> Split:
    if fixed_train is None:
        raise ParamsError("fixed mode needs a training mask: set 'split.fixed.train'")
    pool = _fixed_member(fixed_train, labels, "training mask")
    if fixed_test is None:
        test = (labels > 0) & ~pool
        if not test.any():
            raise DataError(f"{fixed_train}: the training mask leaves no labelled pixel to test")
    else:
        test = _fixed_member(fixed_test, labels, "test mask")
        overlap = int((pool & test).sum())
        if overlap:
            raise DataError(
                f"{fixed_test}: the test mask overlaps the training mask {fixed_train} on "
                f"{overlap} pixel(s)"
            )
    flat_pool = pool.ravel()
    pools = [rng.permutation(idx[flat_pool[idx]]) for idx in members]
    pools = [p for p in pools if len(p)]
    if val_fraction > 0:
        train_idx, val_idx = _carve_val(pools, val_fraction, rng)
    else:
        train_idx, val_idx = np.concatenate(pools), np.zeros(0, dtype=np.int64)
    train, val, _ = _masks_from_indices(labels.shape, train_idx, val_idx, np.zeros(0, np.int64))
    rest = (labels > 0) & ~pool & ~test
    return Split(train, val, test, np.zeros(labels.shape, dtype=bool), excluded=rest)


def _drop_unseen(labels: np.ndarray, split: Split) -> Split:
    """Move the val and test pixels of classes lacking training or test pixels to ``excluded``."""
    dropped = []
    for c in np.unique(labels[labels > 0]):
        in_c = labels == c
        has_train, has_test = (split.train & in_c).any(), (split.test & in_c).any()
        if has_train and has_test:
            continue
        dropped.append(int(c))
        if not has_train:
            move = (split.val | split.test) & in_c
            split.excluded = split.excluded | move
            split.val, split.test = split.val & ~move, split.test & ~move
    split.not_scored = dropped
    if not split.test.any():
        raise DataError(
            f"{split.mode} split leaves no class with both training and test pixels "
            f"(tile_size={split.tile_size}); nothing could be scored"
        )
    return split


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
    guard: str = "centre",
    fixed_train: Any = None,
    fixed_test: Any = None,
    folds: int = 5,
    fold: int = 0,
    block_size: int | None = None,
    context: str = "own",
    class_names: Any = None,
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
      :func:`default_tile_size`) on a grid with a seed-drawn offset. Whole tiles go to training;
      labelled pixels within the guard radius r of a training pixel (:func:`guard_radius`:
      ``centre`` P // 2, ``window`` P - 1) go to ``guard``; the remaining tiles' pixels are then
      split, again by whole tiles, into ``val`` and ``test``, so neither holds a pixel within r
      of a training pixel. Both steps use one search (:func:`_search`): steepest-descent tile
      flips from random starts minimising the squared deviation of each class's share (and the
      overall share) from its target, plus 0.1 x the share of pixels lost to the guard band,
      over several grid offsets. Targets: train : val : test = ``train_fraction`` x
      (1 - ``val_fraction``) : ``train_fraction`` x ``val_fraction`` : 1 - ``train_fraction``.
      A class left without training or test pixels is not scored, with a UserWarning naming
      it: one the search could not place (another seed or a smaller ``tile_size`` may help), or
      one spanning no more than r pixels (:func:`splittable_classes`), which cannot be split.
    - ``kfold``: square blocks of side ``block_size`` (default the patch size) assigned to
      ``folds`` folds, each class spread over them as evenly as the blocks allow
      (:func:`pipeline.data.kfold.assign_folds`); fold ``fold`` is the test set, validation
      blocks come from the other folds. Every input is masked (``extra``'s views): the training
      input shows only the training blocks; validation and test inputs their own blocks
      (``context: own``) or the whole scene (``all``). All labelled pixels are used and every
      class with test pixels in the fold is scored, also one with no training pixel in it.
    - ``fixed``: ``fixed_train`` (and optional ``fixed_test``, default every other labelled
      pixel) are arrays or files (.npy, .mat, .tif) holding a mask or a label map, non-zero =
      member; see :func:`_fixed_member` for the checks.

    ``val_fraction`` of the pool moves to ``val`` (stratified by class in random, per_class and
    fixed modes; guarded tiles in disjoint mode), each class keeping >= 1 training pixel. In
    every mode a class without training or test pixels is listed in ``not_scored`` and its
    validation and test pixels move to ``excluded``.
    """
    if mode not in MODES:
        raise ParamsError(f"mode must be one of {MODES}, got {mode!r}")
    seed = _check_int("seed", seed, 0)
    train_fraction = _check_fraction("train_fraction", train_fraction)
    val_fraction = _check_fraction("val_fraction", val_fraction, allow_zero=True)
    per_class_count = _check_int("per_class_count", per_class_count, 1)
    min_per_class = _check_int("min_per_class", min_per_class, 1)
    patch_size = _check_patch_size(patch_size)
    guard_radius(guard, patch_size)
    if tile_size is not None:
        tile_size = _check_int("tile_size", tile_size, 1)
    labels = check_labels(labels)
    rng = np.random.default_rng(seed)
    classes, members = _class_pixels(labels)

    if mode == "kfold":
        return _kfold_split(
            labels, folds, fold, block_size, seed, val_fraction, patch_size, context, class_names
        )
    if mode == "disjoint":
        tile = tile_size or default_tile_size(labels.shape, patch_size)
        split = _disjoint_split(
            labels, classes, patch_size, train_fraction, val_fraction, tile, guard, rng
        )
        split.tile_size = tile
    elif mode == "fixed":
        split = _fixed_split(labels, classes, members, fixed_train, fixed_test, val_fraction, rng)
    else:
        if mode == "random":
            sizes = _random_sizes(classes, members, train_fraction, rng)
        else:
            sizes = _per_class_sizes(classes, members, per_class_count, min_per_class)
        split = _pixel_split(labels, sizes, classes, members, rng, val_fraction)
    split.mode, split.seed, split.guard_mode = mode, seed, guard
    return _drop_unseen(labels, split)


def _kfold_split(labels, n_folds, fold, block_size, seed, val_fraction, patch_size, context,
                 class_names) -> Split:  # fmt: skip
    assignment = assign_folds(
        labels, n_folds, block_size, seed, val_fraction, patch_size=patch_size
    )
    if not 0 <= fold < n_folds:
        raise ParamsError(f"'split.fold' = {fold} must lie in 0..{n_folds - 1}")
    split = Split(
        assignment.train(fold, labels),
        assignment.val(fold, labels),
        assignment.test(fold, labels),
        np.zeros(labels.shape, dtype=bool),
        mode="kfold",
        seed=seed,
    )
    split.extra = {
        "folds": assignment.fold_map(labels),
        "blocks": assignment.blocks.copy(),
        "view_train": assignment.train_region(fold),
    }
    if context == "own":
        split.extra["view_val"] = assignment.val_region(fold)
        split.extra["view_test"] = assignment.test_region(fold)
    split.info = {
        "fold": fold,
        "folds": n_folds,
        "block_size": assignment.block_size,
        "context": context,
        "kfold": kfold_summary(labels, assignment, class_names),
    }
    if not split.test.any():
        raise DataError(f"fold {fold} holds no labelled pixel to test")
    return split


def split_from_params(
    labels: np.ndarray, split_params: Any, patch_size: int, class_names: Any = None
) -> Split:
    """:func:`make_split` driven by the validated ``split`` section of params.yaml."""
    sp = split_params
    fixed = sp.get("fixed") or {}
    return make_split(
        labels,
        sp["mode"],
        seed=sp["seed"],
        train_fraction=sp["train_fraction"],
        per_class_count=sp["per_class_count"],
        min_per_class=sp["min_per_class"],
        val_fraction=sp["val_fraction"],
        patch_size=patch_size,
        tile_size=sp["tile_size"],
        guard=sp.get("guard") or "centre",
        fixed_train=fixed.get("train"),
        fixed_test=fixed.get("test"),
        folds=sp.get("folds", 5),
        fold=sp.get("fold", 0),
        block_size=sp.get("block_size"),
        context=sp.get("context", "own"),
        class_names=class_names,
    )


def leakage_share(
    train: np.ndarray, test: np.ndarray, patch_size: int, guard: str = "centre"
) -> float:
    """Share (0..1) of ``test`` pixels within the guard radius of some ``train`` pixel.

    ``centre``: inside the P x P window of a training pixel (Chebyshev distance <= P // 2);
    ``window``: their P x P windows share a pixel (distance <= P - 1). Computed by one square
    dilation. An empty test set leaks nothing: 0.0.
    """
    r = guard_radius(guard, patch_size)
    pool, test = _check_mask("train", train), _check_mask("test", test)
    if pool.shape != test.shape:
        raise DataError(f"train shape {pool.shape} differs from test shape {test.shape}")
    n_test = int(test.sum())
    if n_test == 0:
        return 0.0
    return float((dilate_square(pool, 2 * r + 1) & test).sum() / n_test)


def window_leakage(split: Split, patch_size: int) -> dict:
    """Leakage as the windows see it: :func:`leakage_figures` when every input shows the whole
    scene; with masked inputs (k-fold), a test (val) pixel leaks ``centre``-wise when it is
    visible inside some training window, and ``window``-wise when its own window, as its input
    shows it, holds a pixel that some training window also sees."""
    views = {k: split.extra.get(f"view_{k}") for k in ("train", "val", "test")}
    if all(v is None for v in views.values()):
        return leakage_figures(split, patch_size)
    full = np.ones(split.train.shape, dtype=bool)
    seen = dilate_square(split.train, patch_size) & (
        views["train"] if views["train"] is not None else full
    )
    out = {}
    for guard in GUARDS:
        row = {"radius": guard_radius(guard, patch_size)}
        for name in ("test", "val"):
            mask = getattr(split, name)
            view = views[name] if views[name] is not None else full
            near = seen if guard == "centre" else dilate_square(seen & view, patch_size)
            hit = int((near & mask).sum())
            row[f"train_to_{name}_pixels"] = hit
            row[f"train_to_{name}_share"] = hit / int(mask.sum()) if mask.any() else 0.0
        out[guard] = row
    return out


def leakage_figures(split: Split, patch_size: int) -> dict:
    """Pixels and shares of val and test reached by training pixels, for both guard radii."""
    out = {}
    for guard in GUARDS:
        near = dilate_square(split.train, 2 * guard_radius(guard, patch_size) + 1)
        row = {"radius": guard_radius(guard, patch_size)}
        for name in ("test", "val"):
            mask = getattr(split, name)
            hit = int((near & mask).sum())
            row[f"train_to_{name}_pixels"] = hit
            row[f"train_to_{name}_share"] = hit / int(mask.sum()) if mask.any() else 0.0
        out[guard] = row
    return out


def _class_name(class_names: Any, label: int) -> str:
    if class_names is None:
        return f"class_{label}"
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, f"class_{label}"))
    if isinstance(class_names, Sequence) and 0 < label <= len(class_names):
        return str(class_names[label - 1])
    return f"class_{label}"


def not_scored_line(not_scored: list[dict]) -> str:
    """The "not scored: …" sentence every report prints ('' when every class is scored)."""
    if not not_scored:
        return ""
    names = ", ".join(f"{r['label']} ({r['name']})" for r in not_scored)
    return f"not scored: {names} (no training or no test pixels in this split)"


def split_summary(
    labels: np.ndarray, split: Split, patch_size: int, class_names: Any = None
) -> dict:
    """JSON-ready counts per mask and class, the classes not scored and the leakage figures.

    ``class_names`` is a mapping label -> name or a sequence whose item i names label i + 1.
    ``leakage_share`` is the ``centre`` train -> test share; ``leakage`` has both definitions
    (:func:`leakage_figures`) for test and validation.
    """
    labels = check_labels(labels)
    p = _check_patch_size(patch_size)
    names = ("train", "val", "test", "guard", "excluded")
    masks = {k: _check_mask(k, getattr(split, k)) for k in names}
    for k, m in masks.items():
        if m.shape != labels.shape:
            raise DataError(f"split.{k} shape {m.shape} differs from labels shape {labels.shape}")
    pool = masks["train"] | masks["val"]
    per_class = []
    for c in np.unique(labels[labels > 0]):
        in_c = labels == c
        row = {"label": int(c), "name": _class_name(class_names, int(c)), "total": int(in_c.sum())}
        row.update({k: int((m & in_c).sum()) for k, m in masks.items()})
        row["scored"] = int(c) not in split.not_scored
        per_class.append(row)
    leakage = leakage_figures(split, p)
    share = leakage["centre"]["train_to_test_share"]
    counts = {k: int(m.sum()) for k, m in masks.items()}
    counts["train_pool"] = int(pool.sum())
    not_scored = [{"label": r["label"], "name": r["name"]} for r in per_class if not r["scored"]]
    return {
        "mode": split.mode,
        "seed": split.seed,
        "fold": 0,
        "folds": 1,
        **{k: v for k, v in split.info.items()},
        "patch_size": p,
        "guard": split.guard_mode if split.mode == "disjoint" else None,
        "tile_size": split.tile_size,
        "counts": counts,
        "per_class": per_class,
        "not_scored": not_scored,
        "not_scored_note": not_scored_line(not_scored),
        "leakage_share": share,
        "leakage_percent": 100.0 * share,
        "leakage": leakage,
    }
