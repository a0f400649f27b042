"""The leak-free k-fold protocol, checked by brute force: no training step ever draws on a test or
validation pixel's value, and with ``split.context: own`` no test prediction depends on any
training pixel's value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prepared import train_cfg

from pipeline.data.patches import pad_cube
from pipeline.data.prepared import Prepared, split_arrays
from pipeline.data.splits import make_split
from pipeline.evaluation.classification import evaluate_classifier
from pipeline.evaluation.inference import scene_logits
from pipeline.models import MODELS, build_model
from pipeline.params import defaults
from pipeline.training.classifier import ClassifierTask

K, P, C = 14, 9, 3
pytestmark = pytest.mark.usefixtures("one_thread")


def _scene(context: str = "own", seed: int = 0) -> Prepared:
    rng = np.random.default_rng(seed)
    labels = np.zeros((30, 33), np.int64)
    labels[1:29, 1:11], labels[1:29, 12:22], labels[1:29, 23:32] = 1, 2, 3
    labels[rng.random(labels.shape) < 0.15] = 0
    cube = (rng.normal(size=(*labels.shape, K)) + labels[..., None]).astype(np.float32)
    split = make_split(
        labels, "kfold", seed=seed, patch_size=P, folds=3, fold=0, block_size=6, context=context
    )
    meta = {"class_names": ["a", "b", "c"], "fingerprint": "t"}
    return Prepared(cube, labels, split_arrays(split), meta, {})


@pytest.mark.parametrize("batching", ["tiles", "patches"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_training_gradient_reaches_a_test_or_validation_pixel(name, batching):
    data = _scene()
    hidden = ~data.view("train")
    assert (data.test & hidden).sum() == data.test.sum() > 0
    assert (data.val & hidden).sum() == data.val.sum() > 0
    cube = torch.tensor(data.cube, requires_grad=True)
    data.cube = cube
    torch.manual_seed(0)
    model = build_model(name, K, P, C, dropout=0.0)
    cfg = train_cfg(batching=batching, tile_pixels=64, batch_size=64, augment="flips")
    task = ClassifierTask(
        model, data, cfg, seed=0, patch_size=P, padding="zero", eval_batch=64, device="cpu"
    )
    model.train()
    for step, batch in enumerate(task.batches(1)):
        loss, _ = task.loss(model, batch)
        loss.backward(retain_graph=True)
        if step == 2:
            break
    grad = cube.grad.abs().sum(-1).numpy()
    assert grad[hidden].max() == 0.0
    assert grad[~hidden].max() > 0  # the check sees gradients where they are allowed


def _test_logits(model, data: Prepared, dense: bool) -> torch.Tensor:
    """Logits of the test pixels from the test input, by the scene pass `evaluate` runs."""
    padded = pad_cube(torch.from_numpy(data.input_cube("test")), P, "zero")
    logits, _ = scene_logits(model, padded, P, dense=dense, strip_rows=7, batch_size=50)
    return logits[:, torch.from_numpy(data.test)]


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_test_predictions_ignore_the_training_pixels_with_context_own(name, dense):
    torch.manual_seed(0)
    model = build_model(name, K, P, C, dropout=0.0).eval()
    logits = {}
    for context in ("own", "all"):
        data = _scene(context)
        before = _test_logits(model, data, dense)
        labels = evaluate_classifier(model, data, {"size": P, "padding": "zero"},
                                     defaults().inference).labels  # fmt: skip
        data.cube = data.cube.copy()
        data.cube[~data.test & (data.labels > 0)] += 5.0  # every training and validation pixel
        after = _test_logits(model, data, dense)
        relabelled = evaluate_classifier(model, data, {"size": P, "padding": "zero"},
                                         defaults().inference).labels  # fmt: skip
        logits[context] = (before, after, labels[data.test], relabelled[data.test])
    before, after, labels, relabelled = logits["own"]
    assert torch.equal(before, after)
    np.testing.assert_array_equal(labels, relabelled)
    before, after, *_ = logits["all"]
    assert not torch.allclose(before, after)  # with the whole scene as context they do change


def test_every_labelled_pixel_is_tested_once_over_the_folds():
    data = _scene()
    folds = data.split["folds"]
    labelled = data.labels > 0
    assert ((folds >= 0) == labelled).all()
    tested = np.zeros(data.labels.shape, int)
    for k in range(3):
        split = make_split(
            data.labels, "kfold", seed=0, patch_size=P, folds=3, fold=k, block_size=6
        )
        tested += split.test
        assert not (split.train & split.test).any() and not (split.val & split.test).any()
    assert (tested == labelled).all()
