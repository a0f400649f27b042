"""Denoising metrics against hand computations and skimage, the baselines (Gaussian, BM3D, PCA
projection, subspace + 2-D denoiser), cube inference of every denoiser, and the three denoising
stages end to end on a 40×40 crop of Indian Pines."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.evaluation import denoise as dn
from pipeline.models.dncnn import DnCNN
from pipeline.models.dncnn_spectral import DnCNNSpectral
from pipeline.models.dncnn_subspace import DnCNNSubspace, fit_subspace
from pipeline.params import validate
from pipeline.training.denoise_data import add_noise, row_split
from pipeline.training.denoiser import load_denoiser

MODELS = ["dncnn_subspace", "dncnn_spectral", "dncnn"]


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_cube(h=40, w=36, bands=5, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((h, w, bands), np.float32)
    for b in range(bands):
        fx, fy, ph = rng.uniform(0.5, 2, size=3)
        out[..., b] = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    return out


def test_psnr_by_hand_and_against_skimage():
    clean = np.zeros((4, 5))
    est = np.full((4, 5), 0.1)
    assert dn.psnr(clean, est) == pytest.approx(20.0)
    assert dn.psnr(clean, est, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2))
    assert dn.psnr(clean, clean) == math.inf
    rng = np.random.default_rng(1)
    a, b = rng.random((16, 12)), rng.random((16, 12))
    assert dn.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1))


def test_mpsnr_is_the_mean_of_band_psnrs():
    clean = np.zeros((3, 3, 2))
    est = np.stack([np.full((3, 3), 0.1), np.full((3, 3), 0.01)], axis=-1)
    np.testing.assert_allclose(dn.band_psnr(clean, est), [20.0, 40.0])
    assert dn.mpsnr(clean, est) == pytest.approx(30.0)


@pytest.mark.parametrize("shape", [(11, 11), (32, 45), (64, 20)])
def test_ssim_matches_skimage_gaussian_window(shape):
    rng = np.random.default_rng(sum(shape))
    clean = smooth_cube(*shape, bands=3)
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    ours = dn.band_ssim(clean, noisy)
    ref = [
        structural_similarity(
            clean[..., b].astype(np.float64),
            noisy[..., b],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
        )
        for b in range(3)
    ]
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    assert dn.mssim(clean, noisy) == pytest.approx(np.mean(ref))
    assert dn.mssim(clean, clean) == pytest.approx(1.0)


def test_sam_by_hand():
    clean = np.array([[[1.0, 0.0], [1.0, 1.0]]])
    est = np.array([[[0.0, 2.0], [3.0, 0.0]]])
    assert dn.sam_degrees(clean, est) == pytest.approx((90.0 + 45.0) / 2)
    assert dn.sam_degrees(clean, 5 * clean) == pytest.approx(0.0, abs=1e-6)
    with_zero = np.array([[[0.0, 0.0], [1.0, 1.0]]])
    assert dn.sam_degrees(with_zero, est) == pytest.approx(45.0)
    assert math.isnan(dn.sam_degrees(np.zeros((1, 1, 3)), np.ones((1, 1, 3))))


def test_gaussian_tuning_beats_the_noisy_input():
    clean = smooth_cube(48, 48, bands=4)
    split = row_split(48, 0.3)
    train, test = clean[split.train], clean[split.test]
    sigma, scores = dn.tune_gaussian(train, add_noise(train, 30, 0))
    assert sigma > 0 and scores[sigma] == max(scores.values())
    noisy = add_noise(test, 30, 1)
    assert dn.mpsnr(test, dn.gaussian_denoise(noisy, sigma)) > dn.mpsnr(test, noisy) + 3
    np.testing.assert_array_equal(dn.gaussian_denoise(noisy, 0), noisy)


def test_bm3d_status_reports_why():
    ok, note = dn.bm3d_status()
    assert isinstance(ok, bool) and note


def test_bm3d_denoises_when_installed():
    pytest.importorskip("bm3d")
    clean = smooth_cube(24, 24, bands=2)
    noisy = add_noise(clean, 30, 0)
    out = dn.bm3d_denoise(noisy, 30)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert dn.mpsnr(clean, out) > dn.mpsnr(clean, noisy) + 3


@pytest.mark.parametrize("batch_bands", [None, 2])
def test_denoise_cube_runs_each_band_through_the_model(batch_bands):
    torch.manual_seed(0)
    model = DnCNN(depth=3, channels=4).eval()
    cube = smooth_cube(10, 12, bands=5)
    out = dn.denoise_cube(model, cube, batch_bands=batch_bands, amp=False)
    with torch.no_grad():
        ref = model(torch.from_numpy(np.moveaxis(cube, -1, 0)[:, None].copy()))[:, 0]
    np.testing.assert_allclose(out, np.moveaxis(ref.numpy(), 0, -1), rtol=1e-5, atol=1e-6)


def low_rank_cube(h=30, w=26, bands=12, rank=3, seed=0) -> np.ndarray:
    """Spectra that are exact mixtures of ``rank`` endmembers: an exactly rank-``rank`` cube
    (after centring, rank - 1 ... rank)."""
    rng = np.random.default_rng(seed)
    abund = rng.dirichlet(np.ones(rank), size=h * w)
    ends = rng.uniform(0.1, 0.9, size=(rank, bands))
    return (abund @ ends).reshape(h, w, bands).astype(np.float32)


def test_pca_projection_recovers_an_exactly_low_rank_cube():
    clean = low_rank_cube()
    sub = fit_subspace(clean)
    assert sub.eigvals[3:].max() < 1e-10 * sub.eigvals[0]
    np.testing.assert_allclose(dn.pca_denoise(clean, sub, 3), clean, atol=1e-5)
    assert dn.mpsnr(clean, dn.pca_denoise(clean, sub, 1)) < 40
    noisy = add_noise(clean, 30, 0)
    rank, scores = dn.choose_rank(clean, noisy, sub)
    assert rank in (2, 3) and len(scores) == 12
    assert dn.mpsnr(clean, dn.pca_denoise(noisy, sub, rank)) > dn.mpsnr(clean, noisy) + 4


def smooth_mixture(h=48, w=48, bands=12, rank=4, seed=0) -> np.ndarray:
    """Spatially smooth abundances of ``rank`` endmembers: low-rank and smooth, as a scene."""
    fields = smooth_cube(h, w, bands=rank, seed=seed) * 4
    abund = np.exp(fields) / np.exp(fields).sum(-1, keepdims=True)
    ends = np.random.default_rng(seed).uniform(0.1, 0.9, size=(rank, bands))
    return (abund @ ends).astype(np.float32)


def test_subspace_baseline_is_tuned_on_training_rows_and_beats_pca():
    clean = smooth_mixture()
    split = row_split(48, 0.3)
    train, test = clean[split.train], clean[split.test]
    sub = fit_subspace(train)
    noisy_train, noisy = add_noise(train, 30, 0), add_noise(test, 30, 1)
    pca = dn.tune_baseline("pca", train, noisy_train, sub, 30)
    fast = dn.tune_baseline("subspace", train, noisy_train, sub, 30)
    assert fast["denoiser"] in ("gaussian", "bm3d")
    assert all(how in ("drop", "gaussian", "bm3d") for how, _ in fast["plan"])
    out_pca = dn.apply_baseline("pca", noisy, pca, sub, 30)
    out_fast = dn.apply_baseline("subspace", noisy, fast, sub, 30)
    assert dn.mpsnr(test, out_fast) > dn.mpsnr(test, out_pca) > dn.mpsnr(test, noisy)
    zero = dn.tune_baseline("pca", train, train, sub, 0)
    assert zero["rank"] >= 4  # no noise: the projection keeps all the signal


def test_denoise_cube_of_the_spectral_models_matches_the_model():
    torch.manual_seed(0)
    cube = smooth_cube(10, 12, bands=6)
    sub = fit_subspace(cube)
    subspace = DnCNNSubspace(depth=3, channels=4, bands=6, rank=3).eval()
    subspace.set_subspace(sub.mean, sub.basis, sub.eigvals)
    with torch.no_grad():
        ref = subspace(torch.from_numpy(cube)).numpy()
    np.testing.assert_allclose(dn.denoise_cube(subspace, cube, amp=False), ref, atol=1e-5)
    spectral = DnCNNSpectral(depth=3, channels=4, k=2).eval()
    out = dn.denoise_cube(spectral, cube, batch_bands=4, amp=False)
    planes = torch.from_numpy(np.moveaxis(cube, -1, 0).copy())
    with torch.no_grad():
        band2 = spectral(planes[[2, 1, 3]][None])[0, 0].numpy()
    np.testing.assert_allclose(out[..., 2], band2, atol=1e-5)


# --- the three stages, end to end -------------------------------------------------------------


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    """fetch → prepare → train hybridsn → denoise_train → denoise_evaluate → robustness."""
    from pipeline.data.fetching import fetch_dataset
    from pipeline.stages import denoise_evaluate, denoise_train, prepare, robustness, train

    root = tmp_path_factory.mktemp("stages")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.delenv("HSI_DATA_DIR", raising=False)
    mp.setattr(denoise_evaluate, "bm3d_status", lambda: (False, "disabled in this test"))
    params = validate(
        {
            "dataset": {"crop": [0, 40, 0, 40]},
            "pca": {"components": 16},
            "patch": {"size": 11},
            "train": {"epochs": 1, "batch_size": 64},
            "compute": {"device": "cpu"},
            "inference": {"batch_size": 256},
            "denoise": {
                "depth": 3,
                "channels": 8,
                "spectral_k": 4,
                "patch_size": 16,
                "batch_size": 8,
                "epochs": 2,
                "steps_per_epoch": 2,
                "eval_sigmas": [10, 30],
                "robustness_sigmas": [0, 30],
            },
            "tracking": {"enabled": False},
        }
    )
    try:
        fetch_dataset("indian_pines", "data/raw/indian_pines", source="package", progress=False)
        prepare.run(params)
        train.run(params, "hybridsn", 0)
        out = {
            "train": {name: denoise_train.run(params, name) for name in MODELS},
            "evaluate": denoise_evaluate.run(params),
            "robustness": robustness.run(params),
        }
        yield root, params, out
    finally:
        mp.undo()


def test_denoise_train_outputs(stage_run):
    root, _, out = stage_run
    for name in MODELS:
        summary = out["train"][name]
        assert summary["split"] == {
            "height": 40,
            "train_rows": [0, 24],
            "test_rows": [28, 40],
            "gap_rows": 4,
        }
        model, ckpt = load_denoiser(root / f"models/indian_pines/denoisers/{name}.pt")
        assert model.name == name and ckpt["model_config"]["name"] == name
        assert ckpt["band_min"].shape == ckpt["band_max"].shape == (200,)
        assert ckpt["noise"] == {"sigma": 30.0, "blind": True, "sigma_range": [0.0, 55.0]}
        assert ckpt["meta"]["shape"] == [40, 40, 200]
        with open(root / f"reports/indian_pines/denoise/{name}/train_history.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in rows] == [1, 2] and "val_psnr" in rows[0]
        train_json = root / f"reports/indian_pines/denoise/{name}/train.json"
        assert json.loads(train_json.read_text())["best_epoch"] in (0, 1, 2)


def test_denoise_evaluate_outputs(stage_run):
    root, _, out = stage_run
    report = root / "reports/indian_pines/denoise"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics == out["evaluate"]
    assert set(metrics) == {"sigma10", "sigma30"}
    for by_method in metrics.values():
        assert set(by_method) == {"noisy", "gaussian", "pca", "subspace", *MODELS}
        assert by_method["gaussian"]["mpsnr"] > by_method["noisy"]["mpsnr"]
        assert by_method["pca"]["mpsnr"] > by_method["noisy"]["mpsnr"]
        for scores in by_method.values():
            assert {"mpsnr", "mssim", "sam"} <= set(scores)
    assert metrics["sigma30"]["noisy"]["mpsnr"] == pytest.approx(20 * math.log10(255 / 30), 0.02)
    evaluation = json.loads((report / "evaluation.json").read_text())
    assert evaluation["bm3d"] == {"available": False, "note": "disabled in this test"}
    assert evaluation["best_baseline"] in ("gaussian", "pca", "subspace")
    assert set(evaluation["models"]) == set(MODELS)
    assert (report / "comparison.png").stat().st_size > 5000


def _scored(root):
    prepared = root / "data/prepared/indian_pines"
    labels, test = np.load(prepared / "labels.npy"), np.load(prepared / "split.npz")["test"]
    scored = test.copy()
    scored[:28] = False  # the denoisers' training and gap rows
    return labels, scored


def test_robustness_outputs(stage_run):
    root, _, out = stage_run
    report = root / "reports/indian_pines/robustness"
    with open(report / "oa_vs_sigma.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((report / "oa_vs_sigma.json").read_text())
    baseline = summary["best_baseline"]
    assert list(rows[0]) == [
        "sigma",
        "oa_noisy",
        "oa_denoised",
        f"oa_baseline_{baseline}",
        *(f"oa_{m}" for m in MODELS),
    ]
    assert [float(r["sigma"]) for r in rows] == [0.0, 30.0]
    assert all(0 <= float(v) <= 1 for r in rows for k, v in r.items() if k != "sigma")
    assert summary["rows"] == out["robustness"]["rows"]
    assert rows[0]["oa_denoised"] == rows[0][f"oa_{summary['oa_denoised_is']}"]
    _, scored = _scored(root)
    assert summary["n_scored"] == int(scored.sum()) > 0
    assert summary["n_scored"] < summary["n_test"]
    assert (report / "oa_vs_sigma.png").stat().st_size > 5000


def test_robustness_at_sigma_zero_matches_the_prepared_cube(stage_run):
    """Without noise the classifier sees exactly the cube `evaluate` would: same OA on the test
    pixels of the held-out rows."""
    root, params, out = stage_run
    from pipeline.evaluation.inference import predict_scene
    from pipeline.stages.common import checkpoint_path
    from pipeline.training.checkpoint import load_checkpoint, load_model

    prepared = root / "data/prepared/indian_pines"
    ckpt = load_checkpoint(root / checkpoint_path(params, "hybridsn", 0))
    pred = predict_scene(load_model(ckpt), np.load(prepared / "cube.npy"), 11)
    labels, scored = _scored(root)
    oa = float(np.mean(pred.labels[scored] == labels[scored]))
    assert out["robustness"]["rows"][0]["oa_noisy"] == pytest.approx(oa)


def test_robustness_takes_its_classifier_from_params(stage_run):
    root, params, _ = stage_run
    from pipeline.errors import ParamsError
    from pipeline.stages import robustness

    with pytest.raises(ParamsError, match="robustness_seed"):
        robustness.run(params.override({"denoise.robustness_seed": 7}))


# ------------------------------------------------ the fingerprint chain over re-trained models


@pytest.fixture
def stage_copy(stage_run, tmp_path, monkeypatch):
    """A private copy of the stage run's folder, to re-train in."""
    import shutil

    root, params, _ = stage_run
    shutil.copytree(root, tmp_path / "run", symlinks=True)
    monkeypatch.chdir(tmp_path / "run")
    return tmp_path / "run", params.override({"train.models": ["hybridsn"], "train.seeds": [0]})


def test_report_refuses_metrics_of_a_checkpoint_retrained_since_evaluate(stage_copy):
    from pipeline.errors import DataError
    from pipeline.stages import evaluate, report, train

    root, params = stage_copy
    evaluate.run(params, "hybridsn", 0)
    report.run(params)
    train.run(params.override({"train.epochs": 2}), "hybridsn", 0)
    with pytest.raises(
        DataError, match=r"metrics\.json.*checkpoint.*hsi evaluate --model hybridsn"
    ):
        report.run(params)
    evaluate.run(params, "hybridsn", 0)
    assert report.run(params)["models"]["hybridsn"]["epochs_run"]["mean"] == 2


def test_robustness_refuses_a_denoiser_retrained_since_denoise_evaluate(stage_copy):
    from pipeline.errors import DataError
    from pipeline.stages import denoise_evaluate, denoise_train, robustness

    root, params = stage_copy
    denoise_train.run(params.override({"denoise.lr": 0.01}), "dncnn")
    with pytest.raises(DataError, match=r"evaluation\.json.*dncnn\.pt.*hsi denoise_evaluate"):
        robustness.run(params)
    denoise_evaluate.run(params)
    assert robustness.run(params)["rows"]


def test_a_failed_train_keeps_the_previous_run_files(stage_copy, monkeypatch):
    from pipeline.stages import evaluate, report, train

    root, params = stage_copy
    evaluate.run(params, "hybridsn", 0)
    kept = {p: p.read_bytes() for p in root.glob("**/hybridsn-seed0*") if p.is_file()}
    kept |= {p: p.read_bytes() for p in root.glob("reports/*/hybridsn-seed0/*") if p.is_file()}
    assert any(p.name == "train.json" for p in kept) and any(p.suffix == ".pt" for p in kept)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.run(params.override({"train.epochs": 2}), "hybridsn", 0)
    assert {p: p.read_bytes() for p in kept} == kept
    report.run(params)


@pytest.mark.parametrize("name", ["metrics.json", "train.json", "prediction"])
def test_report_after_an_input_was_deleted_names_it_and_the_fix(stage_copy, name):
    from pipeline.errors import DataError
    from pipeline.stages import evaluate, report
    from pipeline.stages.common import run_files

    root, params = stage_copy
    evaluate.run(params, "hybridsn", 0)
    files = run_files(params, "hybridsn", 0)
    path = {"metrics.json": files.metrics_json, "train.json": files.train_json}.get(
        name, files.prediction
    )
    path.unlink()
    with pytest.raises(DataError, match=rf"{path.name}.*hsi evaluate --model hybridsn --seed 0"):
        report.run(params)
