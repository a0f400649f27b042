"""Classical pixel baselines: exact agreement with scikit-learn, dense scenes, weights-only
checkpoints, absent classes and the grouped inner cross-validation."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import check_cv
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from pipeline.data.patches import pad_cube
from pipeline.errors import ParamsError
from pipeline.evaluation.inference import predict_scene, scene_logits
from pipeline.models.classical import KernelSVM, RandomForest, fit_rf, fit_svm

pytestmark = pytest.mark.usefixtures("one_thread")

K = 6
FITTED = (0, 1, 3, 4)
N_CLASSES = 5  # class 2 is absent from the training pixels


def _pixels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Overlapping Gaussian classes with unequal band scales (so standardising matters)."""
    centres = np.random.default_rng(7).normal(scale=1.2, size=(N_CLASSES, K))
    x = centres[labels] + rng.normal(size=(len(labels), K))
    return x * np.geomspace(0.2, 20.0, K) + 3.0


@pytest.fixture(scope="module")
def data():
    """300 pixels of a 15×20 scene, labels in FITTED, groups = 5×5-pixel blocks."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:15, :20]
    y = np.asarray(FITTED)[rng.integers(0, len(FITTED), rows.size)]
    groups = ((rows // 5) * 4 + cols // 5).reshape(-1)
    return _pixels(y, rng), y, groups


@pytest.fixture(scope="module")
def queries(data):
    """Pixels spread well beyond the training cloud, where one-vs-one votes often tie."""
    x, _, _ = data
    rng = np.random.default_rng(1)
    return x.mean(0) + 2.5 * x.std(0) * rng.normal(size=(1500, K))


@pytest.fixture(scope="module")
def svc(data):
    x, y, _ = data
    return make_pipeline(StandardScaler(), SVC(C=10.0, gamma=0.5 / K)).fit(x, y)


@pytest.fixture(scope="module", params=[1, 3], ids=["pure-leaves", "mixed-leaves"])
def forest(request, data):
    """Four trees of pure leaves (exact probability ties), or ten with leaves of >= 3 pixels
    (fractional distributions, whose sum depends on the order of the trees)."""
    x, y, _ = data
    n_trees = 4 if request.param == 1 else 10
    return RandomForestClassifier(
        n_estimators=n_trees, min_samples_leaf=request.param, random_state=0
    ).fit(x, y)


def _scores(model: torch.nn.Module, x: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.as_tensor(x)[:, None, :, None, None])


def rearrange_pixels(cube: np.ndarray) -> torch.Tensor:
    """(N, H, W, K) -> (N·H·W, 1, K, 1, 1) one-pixel patches."""
    return torch.as_tensor(cube).reshape(-1, K)[:, None, :, None, None]


def _boundary_points(predict, x: np.ndarray, steps: int = 36) -> np.ndarray:
    """Both ends of bisected segments between pixels of different predicted classes."""
    rng = np.random.default_rng(2)
    a, b = x[rng.integers(0, len(x), 400)], x[rng.integers(0, len(x), 400)]
    differ = predict(a) != predict(b)
    a, b = a[differ], b[differ]
    for _ in range(steps):
        mid = (a + b) / 2
        same = predict(mid) == predict(a)
        a = np.where(same[:, None], mid, a)
        b = np.where(same[:, None], b, mid)
    return np.concatenate([a, b])


def test_svm_predicts_exactly_as_sklearn(svc, data, queries):
    x, _, _ = data
    model = KernelSVM.from_sklearn(svc, N_CLASSES)
    points = np.concatenate([queries, x, _boundary_points(svc.predict, queries)])
    scores = _scores(model, points)
    np.testing.assert_array_equal(scores.argmax(1).numpy(), svc.predict(points))

    svc[-1].decision_function_shape = "ovo"
    decision = model.decision_function(torch.as_tensor(points)).numpy()
    np.testing.assert_allclose(decision, svc.decision_function(points), rtol=1e-9, atol=1e-12)

    votes = np.ceil(scores[:, list(FITTED)].numpy())  # scores are votes - class/C
    tied = (votes == votes.max(1, keepdims=True)).sum(1) > 1
    assert tied.sum() > 20, "the queries should exercise libsvm's vote tie-break"
    top2 = scores.topk(2, dim=1).values
    assert (top2[:, 0] > top2[:, 1]).all(), "ties must be broken in the scores themselves"


def _threshold_points(forest, x: np.ndarray) -> np.ndarray:
    """Pixels with one feature set exactly to a split threshold (float64) of some tree."""
    rng = np.random.default_rng(3)
    splits = [(t.feature[n], t.threshold[n]) for e in forest.estimators_ for t in [e.tree_]
              for n in range(t.node_count) if t.children_left[n] != -1]  # fmt: skip
    out = x[rng.integers(0, len(x), len(splits))].copy()
    for row, (feature, threshold) in zip(out, splits, strict=True):
        row[feature] = threshold
    return out


def test_rf_predicts_exactly_as_sklearn(forest, data, queries):
    x, _, _ = data
    model = RandomForest.from_sklearn(forest, N_CLASSES)
    at_thresholds = _threshold_points(forest, x)
    rounds_up = at_thresholds.astype(np.float32).astype(np.float64) > at_thresholds
    assert rounds_up.any(), "some thresholds must round up in float32 to test sklearn's cast"
    points = np.concatenate([queries, x, at_thresholds])

    proba = model.predict_proba(torch.as_tensor(points)).numpy()
    assert (proba[:, 2] == 0).all()
    np.testing.assert_array_equal(proba[:, list(FITTED)], forest.predict_proba(points))
    if forest.min_samples_leaf == 1:
        assert ((proba == proba.max(1, keepdims=True)).sum(1) > 1).sum() > 20, "need ties"
    np.testing.assert_array_equal(_scores(model, points).argmax(1).numpy(), forest.predict(points))


def test_rf_scores_keep_the_argmax_in_float32():
    """Two classes whose mean probabilities differ by 1e-12 round to one float32 score."""
    model = RandomForest(K, 1, 3, n_trees=1, max_splits=0, max_leaves=1, max_depth=0,
                         n_fitted_classes=3)  # fmt: skip
    model.root.fill_(-1)
    model.value.copy_(torch.tensor([[[0.25, 0.375 - 1e-12, 0.375 + 1e-12]]], dtype=torch.float64))
    scores = _scores(model, np.zeros((4, K)))
    assert scores.dtype == torch.float32
    assert (scores.argmax(1) == 2).all()
    assert torch.log(torch.tensor(0.375)) <= scores[0, 1] < scores[0, 2]


@pytest.fixture(scope="module", params=["svm", "rf"])
def fitted(request, data):
    x, y, groups = data
    if request.param == "svm":
        return fit_svm(x, y, N_CLASSES, groups=groups, c_grid=(1.0, 10.0), gamma_grid=(0.1, 1.0))
    return fit_rf(x, y, N_CLASSES, n_estimators=8)


def test_forward_dense_equals_forward_per_pixel(fitted, data):
    x, _, _ = data
    rng = np.random.default_rng(4)
    cube = x[rng.integers(0, len(x), (2, 7, 9))].astype(np.float32)  # (N, H, W, K)
    padded = torch.as_tensor(cube).permute(0, 3, 1, 2)[:, None]
    with torch.inference_mode():
        dense = fitted.forward_dense(padded)
        chunked = fitted.forward_dense(padded, chunk_rows=2)
        per_pixel = fitted(rearrange_pixels(cube))
        patches = fitted(torch.nn.functional.pad(rearrange_pixels(cube), (1, 1, 1, 1), value=9.0))
    assert dense.shape == (2, N_CLASSES, 7, 9)
    expected = per_pixel.reshape(2, 7, 9, N_CLASSES).permute(0, 3, 1, 2)
    assert torch.equal(dense, expected)
    assert torch.equal(chunked, expected)
    assert torch.equal(patches, per_pixel)

    scene = torch.as_tensor(pad_cube(cube[0], 1))
    logits, method = scene_logits(fitted, scene, 1, strip_rows=3)
    assert method == "dense" and torch.equal(logits, expected[0])
    labels = predict_scene(fitted, cube[0], 1).labels
    np.testing.assert_array_equal(labels, expected[0].argmax(0).numpy() + 1)


def test_weights_only_round_trip_rebuilds_identical_model(fitted, queries):
    buffer = io.BytesIO()
    torch.save({"state_dict": fitted.state_dict(), "config": fitted.config}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    config = dict(saved["config"])
    cls = {"svm": KernelSVM, "rf": RandomForest}[config.pop("name")]
    bands, patch, n_classes = (config.pop(k) for k in ("bands", "patch_size", "n_classes"))
    rebuilt = cls(bands, patch, n_classes, **config)  # as build_model calls it
    rebuilt.load_state_dict(saved["state_dict"])
    assert rebuilt.config == fitted.config
    assert torch.equal(_scores(rebuilt, queries), _scores(fitted, queries))


def test_absent_class_is_never_predicted(fitted, data, queries):
    x, y, _ = data
    scores = _scores(fitted, np.concatenate([queries, x]))
    assert scores.shape[1] == N_CLASSES
    assert set(scores.argmax(1).tolist()) <= set(FITTED)
    assert (scores[:, 2] < scores.max(1).values).all()


@pytest.mark.parametrize("name", ["svm", "rf"])
def test_two_fitted_classes_of_three(name, data, queries):
    """A binary fit (sklearn flips the sign of a binary SVC's public coefficients)."""
    x, y, _ = data
    keep = np.isin(y, (0, 3))
    x2, y2 = x[keep], np.where(y[keep] == 3, 2, 0)
    if name == "svm":
        reference = make_pipeline(StandardScaler(), SVC(C=10.0, gamma=0.5 / K)).fit(x2, y2)
        model = KernelSVM.from_sklearn(reference, 3)
    else:
        reference = RandomForestClassifier(n_estimators=5, random_state=0).fit(x2, y2)
        model = RandomForest.from_sklearn(reference, 3)
    predicted = _scores(model, queries).argmax(1).numpy()
    np.testing.assert_array_equal(predicted, reference.predict(queries))
    assert set(predicted) == {0, 2}


def test_fit_svm_inner_cv_keeps_groups_apart(data, monkeypatch):
    x, y, groups = data
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    import sklearn.model_selection

    class SpySearch(sklearn.model_selection.GridSearchCV):
        def fit(self, X, y=None, **params):
            cv = check_cv(self.cv, y, classifier=True)
            seen.extend(cv.split(X, y, params.get("groups")))
            return super().fit(X, y, **params)

    monkeypatch.setattr(sklearn.model_selection, "GridSearchCV", SpySearch)
    model = fit_svm(x, y, N_CLASSES, groups=groups, c_grid=(1.0,), gamma_grid=(1.0,))
    assert len(seen) == 3 and model.fit_info["cv"] == "GroupKFold(n_splits=3)"
    for train, val in seen:
        assert not set(groups[train]) & set(groups[val])
    assert sorted(np.concatenate([val for _, val in seen])) == list(range(len(y)))

    seen.clear()
    model = fit_svm(x, y, N_CLASSES, c_grid=(1.0,), gamma_grid=(1.0,))
    assert model.fit_info["cv"] == "StratifiedKFold(n_splits=3)"
    assert any(set(groups[train]) & set(groups[val]) for train, val in seen)


def test_fit_svm_records_the_chosen_hyperparameters(data, queries):
    x, y, groups = data
    model = fit_svm(x, y, N_CLASSES, groups=groups, c_grid=(0.1, 1.0, 10.0),
                    gamma_grid=(0.1, 1.0, 10.0))  # fmt: skip
    info = model.fit_info
    assert info["c_grid"] == [0.1, 1.0, 10.0]
    assert info["gamma_grid"] == [g / K for g in (0.1, 1.0, 10.0)]
    assert info["C"] in info["c_grid"] and info["gamma"] in info["gamma_grid"]
    assert info["gamma_times_bands"] == pytest.approx(info["gamma"] * K)
    grid = np.asarray(info["cv_accuracy_grid"])
    assert grid.shape == (3, 3)
    i, j = info["c_grid"].index(info["C"]), info["gamma_grid"].index(info["gamma"])
    assert info["cv_accuracy"] == grid.max() == grid[i, j]
    refit = make_pipeline(StandardScaler(), SVC(C=info["C"], gamma=info["gamma"])).fit(x, y)
    np.testing.assert_array_equal(_scores(model, queries).argmax(1).numpy(), refit.predict(queries))


def test_fit_rf_records_its_settings(data, queries):
    x, y, _ = data
    model = fit_rf(x, y, N_CLASSES, seed=3, n_estimators=16)
    info = model.fit_info
    params = {k: v for k, v in info.items() if k not in ("n_train", "oob_trees", "oob_accuracy")}
    assert params["random_state"] == 3 and params["n_estimators"] == 16
    refit = RandomForestClassifier(**params).fit(
        x, y
    )  # one fit: the stepped growth changes nothing
    proba = model.predict_proba(torch.as_tensor(queries)).numpy()[:, list(FITTED)]
    np.testing.assert_array_equal(proba, refit.predict_proba(queries))
    assert info["oob_trees"] == [2, 4, 8, 12, 16]
    for n, oob in zip(info["oob_trees"], info["oob_accuracy"], strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            part = RandomForestClassifier(**{**params, "n_estimators": n}, oob_score=True).fit(x, y)
        assert oob == part.oob_score_


@pytest.mark.parametrize("cls", [KernelSVM, RandomForest])
def test_pixel_models_refuse_a_patch_size(cls):
    sizes = (
        {"n_support_vectors": 2, "n_fitted_classes": 2}
        if cls is KernelSVM
        else {"n_trees": 1, "max_splits": 0, "max_leaves": 1, "max_depth": 0, "n_fitted_classes": 2}
    )
    assert cls(K, 1, 3, **sizes).patch_size == 1
    with pytest.raises(ParamsError, match="patch_size must be 1"):
        cls(K, 25, 3, **sizes)
