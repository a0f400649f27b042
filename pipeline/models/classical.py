"""Classical per-pixel baselines: an RBF SVM and a random forest, as weights-only torch modules.

Checkpoints hold only tensors and plain values (``torch.load(weights_only=True)``), so a fitted
scikit-learn estimator cannot be stored as is. :func:`fit_svm` and :func:`fit_rf` fit one and
convert it (``from_sklearn``) into a module whose buffers hold the fitted arrays and whose
``config`` rebuilds it empty: ``KernelSVM(**config)`` then ``load_state_dict``. The forward pass
reproduces scikit-learn's ``predict`` exactly, on any device, behind the CNNs' interface: patches
(N, 1, K, P, P) -> scores (N, C) whose argmax is the class, and :meth:`forward_dense` over a
whole cube, so the project's stages, metrics, maps and scene inference run it unchanged.

Both are pixel models: they see the K features of one pixel, so ``patch_size`` is 1 (any other
value is refused, so a cube padded for a CNN's patches is never mistaken for an unpadded one).
Classes absent from the training pixels keep a score column (C = ``n_classes``) whose score is
always below the winning class's, so they are never predicted.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange
from torch import nn

from pipeline.errors import ParamsError

if TYPE_CHECKING:  # sklearn is imported where a model is fitted: every stage imports this module
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.svm import SVC

C_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)
GAMMA_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
"""Default search grids: C, and γ in units of 1/K on standardised features (γ = 1/K is sklearn's
``gamma="scale"`` there). On Indian Pines (30 PCA features or 200 raw bands, a column split and
the disjoint split) the grouped-CV optimum lay inside the grid, except for raw bands on the small
disjoint training set: there accuracy plateaus along C·γ ≈ 10/K, towards the linear-kernel
limit, and the corner (10⁴, 0.001/K) led that ridge by 0.001."""
# fractions of the forest at which the out-of-bag accuracy is recorded
OOB_STEPS = (0.125, 0.25, 0.5, 0.75, 1.0)

PROBA_FLOOR = 1e-300
"""The random forest's scores are log(mean probability); a zero probability (a class no leaf
reached, or one absent from training) scores log(1e-300) ≈ -690.8, finite so softmax, losses and
entropies stay defined. Any positive mean probability is far above it (≥ 1/(trees·pixels))."""

_F64 = torch.float64


def _check_int(model: str, arg: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ParamsError(f"{model}: {arg} must be an integer, got {value!r}")
    if value < minimum:
        raise ParamsError(f"{model}: {arg}={value} is too small; need {arg} >= {minimum}")
    return int(value)


class PixelClassifier(nn.Module):
    """Input handling shared by the pixel models: patch centres, dense scenes, pixel chunks.

    Subclasses hold their fitted arrays as buffers and implement :meth:`_scores` on (M, K)
    pixel features; ``classes`` (m,) maps their m fitted classes to columns 0..C-1.
    """

    name = "pixel"
    patch_size = 1
    chunk_pixels = 1024
    """Pixels scored at a time: bounds the (pixels × support vectors) kernel or (pixels × trees)
    traversal memory to tens of MB, whatever ``chunk_rows`` is."""

    def __init__(
        self,
        bands: int,
        patch_size: int,
        n_classes: int,
        n_fitted_classes: int,
        fit_info: dict | None,
        min_fitted: int,
        **sizes: int,
    ) -> None:
        super().__init__()
        _check_int(self.name, "bands", bands, 1)
        if patch_size != 1 or isinstance(patch_size, bool):
            raise ParamsError(
                f"{self.name} classifies single pixels: patch_size must be 1, got {patch_size!r}"
            )
        _check_int(self.name, "n_classes", n_classes, 2)
        _check_int(self.name, "n_fitted_classes", n_fitted_classes, min_fitted)
        if n_fitted_classes > n_classes:
            raise ParamsError(
                f"{self.name}: n_fitted_classes={n_fitted_classes} exceeds n_classes={n_classes}"
            )
        for arg, value in sizes.items():
            _check_int(self.name, arg, value, 0)
        self.bands = int(bands)
        self.n_classes = int(n_classes)
        self.config: dict[str, object] = {
            "name": self.name,
            "bands": self.bands,
            "patch_size": 1,
            "n_classes": self.n_classes,
            "n_fitted_classes": int(n_fitted_classes),
            **{k: int(v) for k, v in sizes.items()},
            "fit_info": dict(fit_info or {}),
        }
        self.register_buffer("classes", torch.arange(n_fitted_classes, dtype=torch.int64))

    @property
    def fit_info(self) -> dict:
        """How the model was fitted (hyperparameters, inner-CV scores), as plain values."""
        return self.config["fit_info"]

    @property
    def supports_dense(self) -> bool:
        return True

    def _check(self, x: torch.Tensor, what: str) -> None:
        if x.ndim != 5 or x.shape[1] != 1 or x.shape[2] != self.bands:
            raise ValueError(
                f"{self.name}: {what} must have shape (N, 1, {self.bands}, H, W), "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patches (N, 1, K, P, P), P odd -> scores (N, C) of their centre pixels."""
        self._check(x, "input")
        p = x.shape[3]
        if x.shape[4] != p or p % 2 == 0:
            raise ValueError(f"{self.name}: patches must be P×P with P odd, got {tuple(x.shape)}")
        return self.scores(x[:, 0, :, p // 2, p // 2])

    def forward_dense(self, padded: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
        """Scores (N, C, h, w) of every pixel of (N, 1, K, h, w); patch size 1, so no padding.

        ``chunk_rows`` rows are gathered at a time (pixels are scored ``chunk_pixels`` at a
        time in any case); the result equals :meth:`forward` on each pixel.
        """
        self._check(padded, "padded scene")
        n, h = padded.shape[0], padded.shape[3]
        if h < 1 or padded.shape[4] < 1:
            raise ValueError(f"{self.name}: empty scene {tuple(padded.shape)}")
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"{self.name}: chunk_rows must be >= 1, got {chunk_rows}")
        step = h if chunk_rows is None else chunk_rows
        out = []
        for r in range(0, h, step):
            block = padded[:, 0, :, r : r + step]
            scores = self.scores(rearrange(block, "n k h w -> (n h w) k"))
            out.append(rearrange(scores, "(n h w) c -> n c h w", n=n, h=block.shape[2]))
        return torch.cat(out, dim=2)

    def scores(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel features (M, K) -> float32 scores (M, C), ``chunk_pixels`` at a time."""
        if pixels.ndim != 2 or pixels.shape[1] != self.bands:
            raise ValueError(
                f"{self.name}: pixels must have shape (M, {self.bands}), got {tuple(pixels.shape)}"
            )
        if len(pixels) == 0:
            return torch.empty(0, self.n_classes, device=pixels.device)
        step = self.chunk_pixels
        return torch.cat([self._scores(pixels[i : i + step]) for i in range(0, len(pixels), step)])

    def _scores(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _spread(self, fitted: torch.Tensor, fill: float) -> torch.Tensor:
        """(M, m) values of the fitted classes -> (M, C), ``fill`` in the absent classes."""
        out = torch.full(
            (len(fitted), self.n_classes), fill, dtype=fitted.dtype, device=fitted.device
        )
        out[:, self.classes] = fitted
        return out


def _sklearn_classes(classes: np.ndarray, n_classes: int, model: str) -> np.ndarray:
    classes = np.asarray(classes)
    if classes.dtype.kind not in "iu" or classes.min() < 0 or classes.max() >= n_classes:
        raise ValueError(f"{model}: the estimator's classes must be integers 0..{n_classes - 1}")
    return classes.astype(np.int64)


class KernelSVM(PixelClassifier):
    """An RBF SVC (libsvm, one-vs-one) on standardised pixel features, as buffers.

    Buffers (m fitted classes, S support vectors, float64): ``mean``/``scale`` (K,) of the
    standardisation; ``support_vectors`` (S, K) in standardised units, grouped by class with
    ``n_support`` (m,) per class; ``dual_coef`` (m-1, S) and ``intercept`` (m(m-1)/2,) in
    libsvm's layout and sign (sklearn negates both public arrays in the binary case);
    ``gamma`` (); ``classes`` (m,). Scores are libsvm's votes minus class/C: pair (i, j) votes i
    when its decision value is > 0, else j, and the vote ties libsvm breaks to the lowest class
    are broken the same way by the -class/C term (< 1, so it never outweighs a vote), giving
    one maximum per pixel. Absent classes score -1, below every fitted class.
    """

    name = "svm"

    def __init__(
        self,
        bands: int,
        patch_size: int,
        n_classes: int,
        n_support_vectors: int,
        n_fitted_classes: int,
        fit_info: dict | None = None,
    ) -> None:
        super().__init__(
            bands,
            patch_size,
            n_classes,
            n_fitted_classes,
            fit_info,
            min_fitted=2,
            n_support_vectors=n_support_vectors,
        )
        m, s = n_fitted_classes, n_support_vectors
        self.register_buffer("mean", torch.zeros(bands, dtype=_F64))
        self.register_buffer("scale", torch.ones(bands, dtype=_F64))
        self.register_buffer("support_vectors", torch.zeros(s, bands, dtype=_F64))
        self.register_buffer("n_support", torch.zeros(m, dtype=torch.int64))
        self.register_buffer("dual_coef", torch.zeros(m - 1, s, dtype=_F64))
        self.register_buffer("intercept", torch.zeros(m * (m - 1) // 2, dtype=_F64))
        self.register_buffer("gamma", torch.zeros((), dtype=_F64))
        pairs = torch.tensor(list(combinations(range(m), 2)), dtype=torch.int64)
        self.register_buffer("pair_first", pairs[:, 0], persistent=False)
        self.register_buffer("pair_second", pairs[:, 1], persistent=False)

    @classmethod
    def from_sklearn(
        cls, estimator: SVC | Pipeline, n_classes: int, *, fit_info: dict | None = None
    ) -> KernelSVM:
        """Module from a fitted RBF ``SVC`` with a numeric gamma, alone or after a
        ``StandardScaler`` in a ``Pipeline``; its classes must be integers 0..n_classes-1."""
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        scaler, svc = None, estimator
        if isinstance(estimator, Pipeline):
            *before, svc = [step for _, step in estimator.steps]
            if len(before) > 1 or (before and not isinstance(before[0], StandardScaler)):
                raise ValueError("svm: a Pipeline must be [StandardScaler, SVC] or [SVC]")
            scaler = before[0] if before else None
        if not isinstance(svc, SVC) or svc.kernel != "rbf" or isinstance(svc.gamma, str):
            raise ValueError("svm: needs a fitted SVC(kernel='rbf') with a numeric gamma")
        if svc.break_ties:
            raise ValueError("svm: break_ties=True predicts by decision_function, not votes")
        classes = _sklearn_classes(svc.classes_, n_classes, cls.name)
        bands = int(svc.support_vectors_.shape[1])
        sign = -1.0 if len(classes) == 2 else 1.0
        model = cls(
            bands,
            1,
            n_classes,
            n_support_vectors=len(svc.support_vectors_),
            n_fitted_classes=len(classes),
            fit_info=fit_info,
        )
        mean = np.zeros(bands) if scaler is None or scaler.mean_ is None else scaler.mean_
        scale = np.ones(bands) if scaler is None or scaler.scale_ is None else scaler.scale_
        arrays = {
            "mean": mean,
            "scale": scale,
            "support_vectors": svc.support_vectors_,
            "n_support": svc.n_support_,
            "dual_coef": sign * svc.dual_coef_,
            "intercept": sign * svc.intercept_,
            "gamma": np.asarray(float(svc.gamma)),
            "classes": classes,
        }
        for key, value in arrays.items():
            getattr(model, key).copy_(torch.from_numpy(np.asarray(value)))
        return model

    def _pair_weights(self) -> torch.Tensor:
        """(S, pairs): each support vector's coefficient in each one-vs-one pair, 0 outside it.

        In pair (i, j) libsvm weighs class i's support vectors by ``dual_coef[j - 1]`` and
        class j's by ``dual_coef[i]``.
        """
        m = len(self.n_support)
        sv_class = torch.repeat_interleave(
            torch.arange(m, device=self.n_support.device), self.n_support
        )
        i, j = self.pair_first[:, None], self.pair_second[:, None]
        first = torch.where(sv_class == i, self.dual_coef[self.pair_second - 1], 0.0)
        second = torch.where(sv_class == j, self.dual_coef[self.pair_first], 0.0)
        return (first + second).T

    def decision_function(self, pixels: torch.Tensor) -> torch.Tensor:
        """libsvm's one-vs-one decision values (M, m(m-1)/2), float64, pairs (0,1), (0,2), …

        Squared distances are taken from differences, as libsvm does, not from the
        |x|² + |y|² - 2x·y expansion that cancels for nearby points.
        """
        x = (pixels.to(_F64) - self.mean) / self.scale
        d2 = torch.cdist(x, self.support_vectors, compute_mode="donot_use_mm_for_euclid_dist")
        kernel = torch.exp(-self.gamma * d2.square())
        return kernel @ self._pair_weights() + self.intercept

    def _scores(self, pixels: torch.Tensor) -> torch.Tensor:
        decision = self.decision_function(pixels)
        winners = torch.where(decision > 0, self.pair_first, self.pair_second)
        votes = torch.zeros(len(decision), len(self.n_support), dtype=_F64, device=decision.device)
        votes.scatter_add_(1, winners, torch.ones_like(decision))
        return self._spread(votes - self.classes / self.n_classes, fill=-1.0).float()


def _float32_keeping_argmax(scores: torch.Tensor) -> torch.Tensor:
    """float64 scores -> float32 with the same first argmax: where rounding ties (or reverses)
    the winner with another class, the winner is raised to the next float32 above it."""
    rounded = scores.float()
    best = scores.argmax(1, keepdim=True)
    top = rounded.gather(1, best)
    rivals = rounded.scatter(1, best, -math.inf).amax(1, keepdim=True)
    above = torch.nextafter(rivals, torch.full_like(rivals, math.inf))
    return rounded.scatter(1, best, torch.where(top > rivals, top, above))


class RandomForest(PixelClassifier):
    """A fitted scikit-learn random forest as padded per-tree buffers.

    Each tree's split nodes are renumbered 0..I-1 (root first) and its leaves 0..L-1, both in
    sklearn's node order. Split-node arrays, padded to ``max_splits``: ``feature`` (int64),
    ``threshold`` (float64) and ``children_left``/``children_right`` (int64: a child c >= 0 is
    split node c, c < 0 is leaf ~c = -1 - c). ``value`` (T, ``max_leaves``, m) holds each leaf's
    class distribution (sklearn's ``tree_.value``, fractions that sum to 1); split nodes need
    none, which halves the largest buffer. ``root_leaf`` (T,) is ~0 for a tree that is a single
    leaf, else 0. Every pixel descends every tree at once for ``max_depth`` steps; features are
    rounded to float32 before the ``x <= threshold`` tests, as sklearn's tree prediction casts
    X. :meth:`predict_proba` sums the trees in order and divides by T, bit for bit what sklearn's
    ``predict_proba`` computes; scores are its log (floored at :data:`PROBA_FLOOR`), rounded to
    float32 without changing the argmax.
    """

    name = "rf"

    def __init__(
        self,
        bands: int,
        patch_size: int,
        n_classes: int,
        n_trees: int,
        max_splits: int,
        max_leaves: int,
        max_depth: int,
        n_fitted_classes: int,
        fit_info: dict | None = None,
    ) -> None:
        super().__init__(
            bands,
            patch_size,
            n_classes,
            n_fitted_classes,
            fit_info,
            min_fitted=1,
            n_trees=n_trees,
            max_splits=max_splits,
            max_leaves=max_leaves,
            max_depth=max_depth,
        )
        _check_int(self.name, "n_trees", n_trees, 1)
        _check_int(self.name, "max_leaves", max_leaves, 1)
        shape = (n_trees, max(max_splits, 1))
        for key in ("children_left", "children_right", "feature"):
            self.register_buffer(key, torch.zeros(shape, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(shape, dtype=_F64))
        self.register_buffer("root", torch.zeros(n_trees, dtype=torch.int64))
        self.register_buffer(
            "value", torch.zeros(n_trees, max_leaves, n_fitted_classes, dtype=_F64)
        )
        self.max_depth = int(max_depth)

    @classmethod
    def from_sklearn(
        cls, forest: RandomForestClassifier, n_classes: int, *, fit_info: dict | None = None
    ) -> RandomForest:
        """Module from a fitted single-output forest classifier (random or extra trees)."""
        if getattr(forest, "n_outputs_", None) != 1:
            raise ValueError("rf: needs a fitted single-output forest classifier")
        classes = _sklearn_classes(forest.classes_, n_classes, cls.name)
        trees = [estimator.tree_ for estimator in forest.estimators_]
        is_leaf = [t.children_left == -1 for t in trees]
        n_trees = len(trees)
        max_splits = max(int((~leaf).sum()) for leaf in is_leaf)
        max_leaves = max(int(leaf.sum()) for leaf in is_leaf)
        model = cls(
            forest.n_features_in_,
            1,
            n_classes,
            n_trees=n_trees,
            max_splits=max_splits,
            max_leaves=max_leaves,
            max_depth=max(t.max_depth for t in trees),
            n_fitted_classes=len(classes),
            fit_info=fit_info,
        )
        width = max(max_splits, 1)
        left, right = np.zeros((2, n_trees, width), dtype=np.int64)
        feature = np.zeros((n_trees, width), dtype=np.int64)
        threshold = np.zeros((n_trees, width))
        root = np.zeros(n_trees, dtype=np.int64)
        value = np.zeros((n_trees, max_leaves, len(classes)))
        for t, (tree, leaf) in enumerate(zip(trees, is_leaf, strict=True)):
            new_id = np.where(leaf, ~np.cumsum(leaf) + 1, np.cumsum(~leaf) - 1)
            split = ~leaf
            n = int(split.sum())
            left[t, :n] = new_id[tree.children_left[split]]
            right[t, :n] = new_id[tree.children_right[split]]
            feature[t, :n] = tree.feature[split]
            threshold[t, :n] = tree.threshold[split]
            value[t, : int(leaf.sum())] = tree.value[leaf, 0, :]
            root[t] = new_id[0]
        arrays = {
            "children_left": left,
            "children_right": right,
            "feature": feature,
            "threshold": threshold,
            "root": root,
            "value": value,
            "classes": classes,
        }
        for key, array in arrays.items():
            getattr(model, key).copy_(torch.from_numpy(array))
        return model

    def predict_proba(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mean of the trees' leaf distributions (M, C), float64, 0 for absent classes."""
        x = pixels.to(torch.float32).to(_F64)
        n_trees, width = self.threshold.shape
        offset = torch.arange(n_trees, device=x.device) * width
        left, right = self.children_left.reshape(-1), self.children_right.reshape(-1)
        feature, threshold = self.feature.reshape(-1), self.threshold.reshape(-1)
        node = self.root.expand(len(x), n_trees)
        for _ in range(self.max_depth):
            at = node.clamp_min(0) + offset
            go_left = x.gather(1, feature[at]) <= threshold[at]
            node = torch.where(node < 0, node, torch.where(go_left, left[at], right[at]))
        max_leaves = self.value.shape[1]
        leaf = ~node + torch.arange(n_trees, device=x.device) * max_leaves
        leaves = self.value.reshape(n_trees * max_leaves, -1)[leaf]
        total = torch.zeros(len(x), leaves.shape[2], dtype=_F64, device=x.device)
        for t in range(n_trees):
            total += leaves[:, t]
        return self._spread(total / n_trees, fill=0.0)

    def _scores(self, pixels: torch.Tensor) -> torch.Tensor:
        log_proba = torch.log(self.predict_proba(pixels).clamp_min(PROBA_FLOOR))
        return _float32_keeping_argmax(log_proba)


def _check_xy(x: np.ndarray, y: np.ndarray, n_classes: int, model: str):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"{model}: need X (N, K) and y (N,), got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{model}: X has non-finite values")
    if y.dtype.kind not in "iu" or len(y) == 0 or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"{model}: y must be integer classes 0..{n_classes - 1}")
    return x, y.astype(np.int64)


def fit_svm(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    groups: np.ndarray | None = None,
    seed: int = 0,
    c_grid: tuple[float, ...] = C_GRID,
    gamma_grid: tuple[float, ...] = GAMMA_GRID,
    n_splits: int = 3,
    n_jobs: int = 1,
) -> KernelSVM:
    """Fit StandardScaler + RBF ``SVC`` on training pixels (N, K), C and γ by inner CV.

    The grid is ``c_grid`` × ``gamma_grid``/K, scored by accuracy; the scaler is refitted in
    each inner fold and the best pair refitted on all of ``x``. With ``groups`` (each pixel's
    spatial block) the inner CV is ``GroupKFold``, so no pixel is validated against pixels of
    its own block. Neighbouring pixels are near-duplicates (spatial autocorrelation), so a
    random inner split rewards memorising them: it overrates accuracy and favours a narrower
    kernel than a spatially separate test area rewards (Indian Pines, disjoint split: random
    inner CV scored 0.88 and chose γ = 1/K, grouped CV 0.52 and γ = 0.1/K; test OA 0.46 and
    0.44, AA 0.43 and 0.54). Without groups it is a shuffled ``StratifiedKFold`` (seeded by
    ``seed``; the SVC itself is deterministic). ``x`` is used in float64, so the module
    reproduces ``predict`` on the features cast to float64. ``fit_info`` records C, gamma (and
    gamma·K), the CV scheme, its best accuracy and that of every grid point (rows C, columns
    γ).
    """
    from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x, y = _check_xy(x, y, n_classes, "svm")
    if len(np.unique(y)) < 2:
        raise ValueError("svm: the training pixels must hold at least two classes")
    k = x.shape[1]
    gammas = [g / k for g in gamma_grid]
    if groups is None:
        cv = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
    else:
        groups = np.asarray(groups)
        if groups.shape != y.shape:
            raise ValueError(f"svm: groups must have shape {y.shape}, got {groups.shape}")
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise ValueError("svm: the inner CV needs at least two groups")
        cv = GroupKFold(min(n_splits, n_groups))
    search = GridSearchCV(
        Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="rbf"))]),
        {"svc__C": [float(c) for c in c_grid], "svc__gamma": gammas},
        scoring="accuracy",
        cv=cv,
        n_jobs=n_jobs,
    )
    search.fit(x, y, groups=groups)
    results = search.cv_results_
    accuracy = {
        (p["svc__C"], p["svc__gamma"]): float(s)
        for p, s in zip(results["params"], results["mean_test_score"], strict=True)
    }
    best = search.best_params_
    fit_info = {
        "C": float(best["svc__C"]),
        "gamma": float(best["svc__gamma"]),
        "gamma_times_bands": float(best["svc__gamma"]) * k,
        "cv": f"{type(cv).__name__}(n_splits={cv.get_n_splits()})",
        "cv_accuracy": float(search.best_score_),
        "c_grid": [float(c) for c in c_grid],
        "gamma_grid": gammas,
        "cv_accuracy_grid": [[accuracy[(float(c), g)] for g in gammas] for c in c_grid],
        "n_train": len(y),
    }
    return KernelSVM.from_sklearn(search.best_estimator_, n_classes, fit_info=fit_info)


def fit_rf(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    seed: int = 0,
    n_estimators: int = 200,
    max_features: str | int | float = "sqrt",
    min_samples_leaf: int = 1,
    class_weight: str | None = None,
    n_jobs: int = 1,
) -> RandomForest:
    """Fit a seeded ``RandomForestClassifier`` on training pixels (N, K) and convert it.

    Defaults: 200 trees (accuracy on hyperspectral pixels levels off around 100-200; more cost
    time and checkpoint size); √K features per split (sklearn's default, decorrelates the trees);
    fully grown trees (``min_samples_leaf=1``, no depth limit; averaging, not pruning, controls
    the variance); bootstrap; unweighted classes (OA is the headline metric; ``"balanced"``
    trades OA for AA). The trees are grown in steps (warm start: the same forest as one fit) to
    record the out-of-bag accuracy against the number of trees in ``fit_info`` with the settings;
    out-of-bag pixels neighbour in-bag ones, so it overrates accuracy on a separate area, but
    its levelling off shows whether more trees would help.
    """
    from sklearn.ensemble import RandomForestClassifier

    x, y = _check_xy(x, y, n_classes, "rf")
    params = {
        "n_estimators": n_estimators,
        "max_features": max_features,
        "min_samples_leaf": min_samples_leaf,
        "class_weight": class_weight,
        "bootstrap": True,
        "random_state": seed,
    }
    forest = RandomForestClassifier(**params, n_jobs=n_jobs, warm_start=True, oob_score=True)
    steps = sorted({max(1, round(n_estimators * f)) for f in OOB_STEPS})
    oob = []
    with warnings.catch_warnings():  # with few trees some pixels have no out-of-bag vote yet
        warnings.simplefilter("ignore", UserWarning)
        for n in steps:
            forest.set_params(n_estimators=n).fit(x, y)
            oob.append(float(forest.oob_score_))
    fit_info = {**params, "n_train": len(y), "oob_trees": steps, "oob_accuracy": oob}
    return RandomForest.from_sklearn(forest, n_classes, fit_info=fit_info)


__all__ = [
    "C_GRID",
    "GAMMA_GRID",
    "OOB_STEPS",
    "PROBA_FLOOR",
    "KernelSVM",
    "PixelClassifier",
    "RandomForest",
    "fit_rf",
    "fit_svm",
]
