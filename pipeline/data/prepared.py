"""Prepared data: the scene reduced by PCA, its labels, the split, and what each input shows.

:func:`prepare_scene` is the one way prepared data are made (the `prepare` stage writes its
result; a study makes each fold's in memory). Under the k-fold protocol every input is masked:
the training input shows only the training blocks, the validation and test inputs only their own
blocks (``split.context: own``) or the whole scene (``all``); hidden pixels hold the padding
value 0. A mask that is absent means the whole scene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.pca import fit_pca
from pipeline.data.splits import Split, split_from_params, split_summary, window_leakage
from pipeline.errors import DataError
from pipeline.io import save_npy, save_npz, write_json
from pipeline.provenance import check_prepared, check_same_file, prepared_fingerprint

MASKS = ("train", "val", "test", "guard", "excluded")
VIEWS = ("train", "val", "test")


@dataclass
class Prepared:
    cube: np.ndarray  # (H, W, K) float32, PCA-reduced
    labels: np.ndarray  # (H, W) int64, 0 = unlabelled
    split: dict[str, np.ndarray]  # masks, and for k-fold the fold map, blocks and views
    meta: dict
    pca: dict[str, np.ndarray]
    path: Path | None = None
    summary: dict = field(default_factory=dict)
    spectra: np.ndarray | None = None  # (H, W, B) float32, the full spectra (classical models)

    @property
    def train(self) -> np.ndarray:
        return self.split["train"]

    @property
    def val(self) -> np.ndarray:
        return self.split["val"]

    @property
    def test(self) -> np.ndarray:
        return self.split["test"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def view(self, which: str) -> np.ndarray | None:
        """Pixels the ``which`` input (train, val, test) shows; None for the whole scene."""
        return self.split.get(f"view_{which}")

    def features(self, kind: str = "pca") -> np.ndarray:
        """The (H, W, ·) input of a model: the PCA-reduced cube, or the full ``spectra``."""
        if kind == "pca":
            return self.cube
        if self.spectra is None:
            raise DataError(
                f"{self.path or 'the prepared data'}: no spectra.npy, which the classical models "
                "read; run `hsi prepare` again"
            )
        return self.spectra

    def input_cube(self, which: str, kind: str = "pca") -> np.ndarray:
        """The ``kind`` features as the ``which`` input sees them: hidden pixels set to the
        padding value 0."""
        cube, view = self.features(kind), self.view(which)
        return cube if view is None else cube * view[..., None].astype(cube.dtype)

    @property
    def groups(self) -> np.ndarray | None:
        """(H, W) spatial block of each pixel (k-fold), for grouped inner cross-validation."""
        return self.split.get("blocks")


def split_arrays(split: Split) -> dict[str, np.ndarray]:
    """What split.npz holds: the masks and, for k-fold, the fold map, blocks and views."""
    return {**{k: getattr(split, k) for k in MASKS}, **split.extra}


def check_scene(cube: np.ndarray, gt: np.ndarray, manifest: dict, where: Path) -> None:
    """Fail with the file, key and problem on non-finite values, shape or label mismatches."""
    cube_file = f"{where / manifest['cube']['file']} (key {manifest['cube'].get('key')!r})"
    gt_file = f"{where / manifest['gt']['file']} (key {manifest['gt'].get('key')!r})"
    if cube.ndim != 3:
        raise DataError(f"{cube_file}: expected an H×W×bands cube, got shape {cube.shape}")
    if np.issubdtype(cube.dtype, np.floating):
        bad = ~np.isfinite(cube)
        if bad.any():
            r, c, b = np.argwhere(bad)[0]
            raise DataError(
                f"{cube_file}: {int(bad.sum())} NaN/Inf values (first at row {r}, col {c}, band {b})"
            )
    if gt.shape != cube.shape[:2]:
        raise DataError(
            f"{gt_file}: ground truth shape {gt.shape} does not match the cube's "
            f"{cube.shape[:2]} from {cube_file}"
        )
    n_classes = len(manifest["class_names"])
    if gt.min() < 0 or gt.max() > n_classes:
        raise DataError(
            f"{gt_file}: labels must lie in 0..{n_classes} (0 = unlabelled, {n_classes} "
            f"classes), found {int(gt.min())}..{int(gt.max())}"
        )
    if not (gt > 0).any():
        raise DataError(f"{gt_file}: no labelled pixels")


def prepare_scene(
    cube: np.ndarray,
    gt: np.ndarray,
    manifest: dict,
    params: Any,
    *,
    where: Path = Path("."),
    fold: int | None = None,
) -> Prepared:
    """Check the raw scene (``where`` names its folder in errors), split the labelled pixels,
    fit PCA on the training pixels (or all, as the protocol says) and reduce the cube; ``fold``
    overrides ``split.fold`` (a study prepares each fold)."""
    check_scene(cube, gt, manifest, where)
    labels = gt.astype(np.int64)
    sp, patch = params.split, params.patch.size
    if fold is not None:
        sp = params.override({"split.fold": fold}).split
    split = split_from_params(labels, sp, patch, manifest["class_names"])
    pc = params.pca
    k = pc.components or manifest["pca_components"]
    fit_mask = split.train if pc.fit_on == "train" else np.ones(labels.shape, bool)
    pixels = cube.reshape(-1, cube.shape[-1])
    pca = fit_pca(pixels[fit_mask.ravel()], k, whiten=pc.whiten, scale=pc.scale)
    reduced = pca.transform(cube)
    spectra = np.asarray(cube, dtype=np.float32)
    arrays = split_arrays(split)
    summary = split_summary(labels, split, patch, manifest["class_names"])
    summary["leakage"] = window_leakage(split, patch)
    summary["leakage_share"] = summary["leakage"]["centre"]["train_to_test_share"]
    summary |= {
        "dataset": manifest["dataset"],
        "labelled": int((labels > 0).sum()),
        "shape": list(labels.shape),
    }
    summary.setdefault("context", "all")
    meta = {
        "dataset": manifest["dataset"],
        "title": manifest.get("title", manifest["dataset"]),
        "class_names": manifest["class_names"],
        "n_classes": len(manifest["class_names"]),
        "shape": list(reduced.shape),
        "raw_bands": int(cube.shape[-1]),
        "crop": list(params.dataset.crop) if params.dataset.crop else None,
        "rgb_bands": manifest["rgb_bands"],
        "palette": manifest["palette"],
        "cube_sha256": manifest["cube"]["sha256"],
        "gt_sha256": manifest["gt"]["sha256"],
        "source": manifest["cube"].get("source"),
        "label_values": manifest["gt"].get("label_values"),
        "fingerprint": prepared_fingerprint(reduced, labels, arrays, pca.to_arrays(), spectra),
        "protocol": params.protocol,
        "split": {
            k: summary.get(k)
            for k in ("mode", "guard", "fold", "folds", "context", "not_scored", "not_scored_note")
        },
        "pca": {"components": k, "fit_on": pc.fit_on, "fit_pixels": int(fit_mask.sum())},
    }
    prepared = Prepared(
        reduced, labels, arrays, meta, pca.to_arrays(), summary=summary, spectra=spectra
    )
    prepared.summary["pca"] = {
        "components": k,
        "fit_on": pc.fit_on,
        "fit_pixels": int(fit_mask.sum()),
        "whiten": pc.whiten,
        "scale": pc.scale,
        "global_scale": pca.scale,
        "explained_variance_ratio": pca.explained_variance_ratio.tolist(),
        "explained_variance_ratio_total": float(pca.explained_variance_ratio.sum()),
    }
    return prepared


def load(path: Path, manifest: Path | None = None) -> Prepared:
    """Prepared data from folder ``path``, after checking that its arrays are those its
    ``meta.json`` records (files of one `prepare` run) and, when the raw ``manifest`` exists,
    that they were made from the raw cube it names."""
    try:
        split = np.load(path / "split.npz")
        pca = np.load(path / "pca.npz")
        data = Prepared(
            cube=np.load(path / "cube.npy"),
            labels=np.load(path / "labels.npy"),
            split={k: split[k] for k in split.files},
            meta=json.loads((path / "meta.json").read_text()),
            pca={k: pca[k] for k in pca.files},
            path=path,
            spectra=np.load(path / "spectra.npy") if (path / "spectra.npy").is_file() else None,
        )
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: missing; run `hsi prepare` (or `dvc repro`) first") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable prepared data ({e}); run `hsi prepare`") from e
    check_prepared(str(path), data.meta, data.cube, data.labels, data.split, data.pca, data.spectra)
    if manifest is not None and manifest.is_file():
        raw = json.loads(manifest.read_text())
        check_same_file(
            str(path / "meta.json"),
            data.meta.get("cube_sha256"),
            raw["cube"]["sha256"],
            against=str(manifest),
            fix="hsi prepare",
            thing="raw cube recorded in",
        )
    return data


def save(path: Path, data: Prepared) -> None:
    """Write prepared data to folder ``path``; ``meta.json`` last, holding the fingerprint of
    the arrays, so files of two different or interrupted runs are refused by :func:`load`."""
    save_npy(path / "cube.npy", data.cube)
    save_npy(path / "spectra.npy", data.spectra)
    save_npy(path / "labels.npy", data.labels)
    save_npz(path / "split.npz", **data.split)
    save_npz(path / "pca.npz", **data.pca)
    write_json(path / "pca.json", data.summary["pca"])
    write_json(path / "split.json", {k: v for k, v in data.summary.items() if k != "pca"})
    write_json(path / "meta.json", data.meta)
