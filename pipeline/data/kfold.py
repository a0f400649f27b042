"""Leak-free spatial k-fold cross-validation over square blocks of the scene.

Nalepa, Myller and Kawulok ("Validating hyperspectral image segmentation", IEEE GRSL 2019) keep
every labelled pixel: the scene is cut into square blocks, each block goes to one of K folds,
and each fold is the test set once. When fold k is tested, some blocks of the other folds
validate and the rest train; a window may only see pixels of its own set (the input masking
that enforces this lives elsewhere and uses the *regions* given here). Every labelled pixel is
tested exactly once over the K runs. Blocks go to folds so that each class spreads over the
folds as evenly as the blocks allow (:func:`assign_folds`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import DataError, ParamsError

_SIZE_WEIGHT = 1.0
_KICKS = 40
_KICK_SHARE = 0.1
_MAX_KICK = 6
_MAX_SWAP_BLOCKS = 600


def default_block_size(patch_size: int) -> int:
    """Default block side for a P x P patch model: P.

    With side P the window of a block's central pixel lies wholly inside its block; smaller
    blocks leave every window cut by the masking. Larger blocks spread the classes worse. On
    Indian Pines (5 folds, seeds 0-4) sides 12, 16, 20, 25, 30 give a mean over the 16 classes
    of (largest - smallest fold share) of 0.28, 0.35, 0.41, 0.50, 0.62 (ideal 0), and 12, 8,
    8.4, 7.6, 6.2 classes present in all five folds. Nothing argues for a side above P, so the
    default is the smallest one keeping central windows whole. At P = 25 Corn (class 4, 237
    pixels) and Oats (9) each lie in one block, hence in one fold.
    """
    return _check_int("patch.size", patch_size, 1)


@dataclass(frozen=True, eq=False)
class BlockFolds:
    """Square blocks of an (H, W) scene assigned to ``n_folds`` folds, with validation blocks.

    ``blocks`` holds each pixel's block id on a grid of side ``block_size`` from (0, 0) (edge
    blocks may be smaller); ``block_fold`` the fold of every block, labelled or not, so that
    each pixel belongs to exactly one fold region; ``val_blocks[k]`` the ids of the blocks,
    all outside fold k, that validate when fold k is the test fold.
    """

    block_size: int
    seed: int
    n_folds: int
    val_fraction: float
    blocks: np.ndarray
    block_fold: np.ndarray
    val_blocks: tuple[np.ndarray, ...]

    def __post_init__(self):
        blocks = np.asarray(self.blocks)
        block_fold = np.asarray(self.block_fold)
        if blocks.ndim != 2 or not np.issubdtype(blocks.dtype, np.integer):
            raise DataError(
                f"blocks must be a 2-D integer array, got {blocks.dtype} {blocks.shape}"
            )
        if block_fold.ndim != 1 or blocks.min() < 0 or blocks.max() >= len(block_fold):
            raise DataError(f"block ids must index block_fold ({block_fold.shape})")
        if block_fold.min() < 0 or block_fold.max() >= self.n_folds:
            raise DataError(f"block folds must lie in [0, {self.n_folds})")
        if len(self.val_blocks) != self.n_folds:
            raise DataError(
                f"val_blocks has {len(self.val_blocks)} entries for {self.n_folds} folds"
            )
        val_blocks = []
        for k, ids in enumerate(self.val_blocks):
            ids = np.unique(np.asarray(ids, dtype=np.int64))
            if ids.size and (ids.min() < 0 or ids.max() >= len(block_fold)):
                raise DataError(f"validation blocks of fold {k} name unknown block ids")
            if (block_fold[ids] == k).any():
                raise DataError(f"validation blocks of fold {k} include blocks of fold {k}")
            val_blocks.append(_frozen(ids))
        object.__setattr__(self, "blocks", _frozen(blocks.astype(np.int64, copy=False)))
        object.__setattr__(self, "block_fold", _frozen(block_fold.astype(np.int64, copy=False)))
        object.__setattr__(self, "val_blocks", tuple(val_blocks))

    @property
    def shape(self) -> tuple[int, int]:
        return self.blocks.shape

    def region_map(self) -> np.ndarray:
        """(H, W) fold of every pixel, labelled or not."""
        return self.block_fold[self.blocks]

    def fold_map(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) fold of each labelled pixel, -1 where unlabelled (what split.npz stores)."""
        labels = self._labels(labels)
        return np.where(labels > 0, self.region_map(), -1)

    def test_region(self, k: int) -> np.ndarray:
        """All pixels of the blocks of fold k."""
        return self.region_map() == self._fold(k)

    def val_region(self, k: int) -> np.ndarray:
        """All pixels of the blocks that validate when fold k is tested."""
        is_val = np.zeros(len(self.block_fold), dtype=bool)
        is_val[self.val_blocks[self._fold(k)]] = True
        return is_val[self.blocks]

    def train_region(self, k: int) -> np.ndarray:
        """All pixels of the other folds' blocks that do not validate when fold k is tested."""
        return ~self.test_region(k) & ~self.val_region(k)

    def test(self, k: int, labels: np.ndarray) -> np.ndarray:
        return self.test_region(k) & (self._labels(labels) > 0)

    def val(self, k: int, labels: np.ndarray) -> np.ndarray:
        return self.val_region(k) & (self._labels(labels) > 0)

    def train(self, k: int, labels: np.ndarray) -> np.ndarray:
        return self.train_region(k) & (self._labels(labels) > 0)

    def _fold(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.n_folds:
            raise ValueError(f"fold must be an integer in [0, {self.n_folds}), got {k!r}")
        return int(k)

    def _labels(self, labels: Any) -> np.ndarray:
        arr = np.asarray(labels)
        if arr.shape != self.shape:
            raise DataError(f"labels have shape {arr.shape}, the folds were made for {self.shape}")
        return arr


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, copy=True)
    arr.setflags(write=False)
    return arr


def _check_int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParamsError(f"'{key}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_labels(labels: Any) -> np.ndarray:
    """Labels as an (H, W) int64 array (0 = unlabelled) with at least one labelled pixel."""
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


def block_grid(shape: tuple[int, int], block_size: int) -> np.ndarray:
    """(H, W) block id of each pixel: square blocks of side ``block_size`` from (0, 0), row-major."""
    h, w = shape
    nx = -(-w // block_size)
    rows = np.arange(h) // block_size
    cols = np.arange(w) // block_size
    return rows[:, None] * nx + cols[None, :]


class _Balancer:
    """Blocks into K groups minimising ``sum_kj w_j (F[k, j] - target[k, j]) ** 2``.

    ``F[k]`` sums the rows of ``x`` (blocks x counts) in group k. A move or a swap changes two
    rows of F, so the score change of every candidate follows from ``G = (x * w) @ (F - target).T``
    and the weighted Gram matrix of x: one (B, K) array per move, one (B, B) per swap. Above
    ``_MAX_SWAP_BLOCKS`` blocks only moves are tried: on Pavia University with 12-pixel blocks
    (844) swaps cost 10x the time and changed the worst class share by 0.002.
    """

    def __init__(self, x: np.ndarray, w: np.ndarray, target: np.ndarray):
        self.x, self.w, self.target = x, w, target
        self.xw = x * w
        self.q = (self.xw * x).sum(1)
        self.n, self.k = len(x), len(target)
        self.half_swap = None
        if self.n <= _MAX_SWAP_BLOCKS:
            self.half_swap = self.q[:, None] + self.q[None, :] - 2 * (self.xw @ x.T)

    def sums(self, group: np.ndarray) -> np.ndarray:
        return np.stack([self.x[group == k].sum(0) for k in range(self.k)])

    def score(self, sums: np.ndarray) -> float:
        return float((self.w * (sums - self.target) ** 2).sum())

    def greedy(self) -> np.ndarray:
        """Largest blocks first, each to the group where it lowers the score most."""
        order = np.argsort(-self.x[:, -1], kind="stable")
        group = np.zeros(self.n, dtype=np.int64)
        f = np.zeros_like(self.target)
        for b in order:
            g = int(np.argmin(2 * (f - self.target) @ self.xw[b] + self.q[b]))
            group[b] = g
            f[g] += self.x[b]
        return group

    def descend(self, group: np.ndarray) -> tuple[np.ndarray, float]:
        """Steepest descent: the best single-block move, or the best swap where no move helps.

        A swap within one group changes the score by ``half_swap >= 0``, so needs no mask.
        """
        group = group.copy()
        ar = np.arange(self.n)
        f = self.sums(group)
        score = self.score(f)
        while True:
            g = self.xw @ (f - self.target).T
            own = g[ar, group]
            move = g - own[:, None] + self.q[:, None]
            move[ar, group] = np.inf
            b, to = divmod(int(np.argmin(move)), self.k)
            new = f.copy()
            new[group[b]] -= self.x[b]
            new[to] += self.x[b]
            if self._better(new, score):
                group[b], f, score = to, new, self.score(new)
                continue
            if self.half_swap is None:
                return group, score
            a = g[:, group]
            a -= own[:, None]
            swap = a + a.T
            swap += self.half_swap
            b, e = divmod(int(np.argmin(swap)), self.n)
            new = f.copy()
            new[group[b]] += self.x[e] - self.x[b]
            new[group[e]] += self.x[b] - self.x[e]
            if not self._better(new, score):
                return group, score
            group[b], group[e], f, score = group[e], group[b], new, self.score(new)

    def _better(self, sums: np.ndarray, score: float) -> bool:
        return self.score(sums) < score - 1e-12 * max(score, 1.0)

    def search(self, rng: np.random.Generator) -> np.ndarray:
        """Greedy start, descent, then seeded kicks (a few blocks moved at random) and descent.

        A kicked solution replaces the best one when it scores no worse, so the seed picks
        among equally good assignments too.
        """
        best, best_score = self.descend(self.greedy())
        if self.n < 2 or self.k < 2:
            return best
        m = int(np.clip(round(_KICK_SHARE * self.n), 1, _MAX_KICK))
        for _ in range(_KICKS):
            group = best.copy()
            pick = rng.choice(self.n, size=m, replace=False)
            group[pick] = (group[pick] + rng.integers(1, self.k, size=m)) % self.k
            group, score = self.descend(group)
            if score <= best_score + 1e-12 * max(best_score, 1.0):
                best, best_score = group, score
        return best


def _block_counts(labels: np.ndarray, blocks: np.ndarray, n_blocks: int) -> np.ndarray:
    """(n_blocks, C + 1) labelled pixels of each class present in each block, last column all."""
    labelled = labels > 0
    classes = np.unique(labels[labelled])
    cls = np.searchsorted(classes, labels[labelled])
    counts = np.zeros((n_blocks, len(classes) + 1))
    np.add.at(counts, (blocks[labelled], cls), 1)
    counts[:, -1] = counts[:, :-1].sum(1)
    return counts


def _weights(target_counts: np.ndarray) -> np.ndarray:
    """Weights making the score the mean squared relative deviation over the classes present,
    plus ``_SIZE_WEIGHT`` x the squared relative deviation of the total (last column)."""
    t = target_counts.astype(float)
    present = t[:-1] > 0
    w = np.zeros_like(t)
    w[:-1][present] = 1.0 / (present.sum() * t[:-1][present] ** 2)
    w[-1] = _SIZE_WEIGHT / t[-1] ** 2 if t[-1] > 0 else 0.0
    return w


def _choose_val(counts: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Which pool blocks (rows of ``counts``) validate: about ``val_fraction`` of each class.

    Afterwards every class with pool pixels keeps a training pixel: while one has none, the
    validation block whose return to training costs least goes back.
    """
    pool = counts.sum(0)
    target = np.stack([(1 - val_fraction) * pool, val_fraction * pool])
    balancer = _Balancer(counts, _weights(val_fraction * pool), target)
    is_val = balancer.search(rng) == 1
    while True:
        train = counts[~is_val, :-1].sum(0)
        lacking = (pool[:-1] > 0) & (train == 0)
        if not lacking.any():
            return is_val
        c = int(np.argmax(lacking))
        options = np.flatnonzero(is_val & (counts[:, c] > 0))
        costs = []
        for b in options:
            trial = is_val.copy()
            trial[b] = False
            costs.append(balancer.score(balancer.sums(trial.astype(np.int64))))
        is_val[options[int(np.argmin(costs))]] = False


def assign_folds(
    labels: np.ndarray,
    n_folds: int = 5,
    block_size: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    *,
    patch_size: int = 25,
) -> BlockFolds:
    """Square blocks of side ``block_size`` (default :func:`default_block_size` of
    ``patch_size``) assigned to ``n_folds`` folds, each class spread as evenly as possible.

    The score is the mean over classes of the squared relative deviation of each fold's class
    count from class total / K, plus the same for fold sizes (labelled pixels). Start: largest
    blocks first, each to the fold it helps most; then steepest descent over single-block
    moves and swaps, and ``_KICKS`` seeded kicks (``np.random.default_rng(seed)``). No fold
    ends without labelled pixels: while one is empty, moving a block into it from a fold holding
    two lowers the fold-size term, so the descent cannot stop there. Blocks without labelled
    pixels go, largest first, to the fold with the least area. Validation for test fold k:
    blocks of the other folds holding about ``val_fraction`` of each class's pool, chosen by
    the same search, each class keeping >= 1 training pixel; 0 = none.
    """
    seed = _check_int("split.seed", seed, 0)
    n_folds = _check_int("split.folds", n_folds, 2)
    ok = isinstance(val_fraction, (int, float, np.integer, np.floating))
    if isinstance(val_fraction, bool) or not (ok and 0 <= val_fraction < 1):
        raise ParamsError(f"'split.val_fraction' must be a number in [0, 1), got {val_fraction!r}")
    labels = check_labels(labels)
    h, w = labels.shape
    if block_size is None:
        block_size = default_block_size(patch_size)
    block_size = _check_int("split.block_size", block_size, 1)
    if block_size > min(h, w):
        raise ParamsError(
            f"'split.block_size' = {block_size} does not fit in the {h} x {w} scene "
            f"(at most {min(h, w)})"
        )
    blocks = block_grid((h, w), block_size)
    n_blocks = int(blocks.max()) + 1
    counts = _block_counts(labels, blocks, n_blocks)
    labelled = np.flatnonzero(counts[:, -1] > 0)
    if len(labelled) < n_folds:
        raise ParamsError(
            f"'split.folds' = {n_folds} needs at least as many blocks holding labelled pixels, "
            f"but 'split.block_size' = {block_size} gives {len(labelled)}: use fewer folds or "
            "smaller blocks"
        )
    rng = np.random.default_rng(seed)
    x = counts[labelled]
    total = x.sum(0)
    target = np.broadcast_to(total / n_folds, (n_folds, len(total))).copy()
    groups = _Balancer(x, _weights(total / n_folds), target).search(rng)

    block_fold = np.zeros(n_blocks, dtype=np.int64)
    block_fold[labelled] = groups
    area = np.bincount(blocks.ravel(), minlength=n_blocks)
    fold_area = np.bincount(groups, weights=area[labelled], minlength=n_folds)
    empty = np.setdiff1d(np.arange(n_blocks), labelled)
    for b in empty[np.argsort(-area[empty], kind="stable")]:
        k = int(np.argmin(fold_area))
        block_fold[b] = k
        fold_area[k] += area[b]

    val_blocks = []
    for k in range(n_folds):
        pool = labelled[groups != k]
        if val_fraction > 0:
            val_blocks.append(pool[_choose_val(counts[pool], float(val_fraction), rng)])
        else:
            val_blocks.append(np.zeros(0, dtype=np.int64))
    return BlockFolds(
        block_size=block_size,
        seed=seed,
        n_folds=n_folds,
        val_fraction=float(val_fraction),
        blocks=blocks,
        block_fold=block_fold,
        val_blocks=tuple(val_blocks),
    )


def _class_name(class_names: Any, label: int) -> str:
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, f"class_{label}"))
    if isinstance(class_names, Sequence) and 0 < label <= len(class_names):
        return str(class_names[label - 1])
    return f"class_{label}"


def kfold_summary(labels: np.ndarray, folds: BlockFolds, class_names: Any = None) -> dict:
    """JSON-ready counts of each fold's run and how evenly each class spreads over the folds.

    ``folds[k]``: the labelled blocks of fold k, the validation blocks, and per class and in
    all the pixels that train, validate and test when fold k is the test fold. ``spread``: per
    class its pixels in each fold, its smallest and largest share of one fold (ideal 1 / K
    each) and the number of folds holding it. ``class_names``: a mapping label -> name or a
    sequence naming labels 1, 2, ...
    """
    labels = check_labels(labels)
    fold_map = folds.fold_map(labels)
    classes = np.unique(labels[labels > 0])
    names = {int(c): _class_name(class_names, int(c)) for c in classes}
    is_labelled = np.zeros(len(folds.block_fold), dtype=bool)
    is_labelled[folds.blocks[labels > 0]] = True
    per_fold = []
    for k in range(folds.n_folds):
        masks = {s: getattr(folds, s)(k, labels) for s in ("train", "val", "test")}
        rows = []
        for c in classes:
            in_c = labels == c
            row = {"label": int(c), "name": names[int(c)], "total": int(in_c.sum())}
            rows.append(row | {s: int((m & in_c).sum()) for s, m in masks.items()})
        per_fold.append(
            {
                "fold": k,
                "test_blocks": int((is_labelled & (folds.block_fold == k)).sum()),
                "val_blocks": len(folds.val_blocks[k]),
                "counts": {s: int(m.sum()) for s, m in masks.items()},
                "per_class": rows,
            }
        )
    spread = []
    for c in classes:
        per = np.bincount(fold_map[labels == c], minlength=folds.n_folds)
        share = per / per.sum()
        spread.append(
            {
                "label": int(c),
                "name": names[int(c)],
                "total": int(per.sum()),
                "per_fold": [int(v) for v in per],
                "min_share": float(share.min()),
                "max_share": float(share.max()),
                "folds_with_class": int((per > 0).sum()),
            }
        )
    return {
        "mode": "kfold",
        "block_size": folds.block_size,
        "n_folds": folds.n_folds,
        "seed": folds.seed,
        "val_fraction": folds.val_fraction,
        "n_blocks": len(folds.block_fold),
        "n_labelled_blocks": int(is_labelled.sum()),
        "folds": per_fold,
        "spread": spread,
    }
