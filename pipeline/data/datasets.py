"""Registry of hyperspectral classification benchmarks and a verified, offline-first fetcher.

Each :class:`DatasetInfo` records where the files come from, their size and sha256, the licence
and the citation, in the spirit of TorchGeo's dataset classes:

=================  =====================================================  =====================
name               source (primary)                                       licence
=================  =====================================================  =====================
indian_pines       AVIRIS 1992, Purdue PURR doi:10.4231/R7RX991C; files   CC BY 3.0
                   shipped in the PyPI package tensorly==0.10.0 (offline)
salinas            AVIRIS 1998, GIC UPV/EHU "Hyperspectral Remote         none stated
                   Sensing Scenes"                                        (free for research)
salinas_a          sub-scene of Salinas, GIC UPV/EHU                      none stated
pavia_university   ROSIS-03, courtesy P. Gamba (Univ. of Pavia), EHU      none stated
pavia_centre       ROSIS-03, courtesy P. Gamba (Univ. of Pavia), EHU      none stated
ksc                AVIRIS 1996, UT Austin CSR (Ham et al. 2005), EHU      none stated
botswana           EO-1 Hyperion 2001, UT Austin CSR (Ham et al. 2005)    none stated
custom             a user's own cube and label map (``custom=...``)       the user's
=================  =====================================================  =====================

Sizes and sha256 come from the original files (see ``/work/shared/datasets/SOURCES.md`` in the
project workspace). A ``sha256`` of ``None`` means no trusted hash is known: the first fetch
records the hash in the manifest (``sha256_recorded_unknown``) and logs a warning.

:func:`fetch_dataset` tries, per file: a local folder (``data_dir`` or ``$HSI_DATA_DIR``, also
its ``<name>/`` subfolder), then an installed package, then the public URLs. Every file is
verified before it is renamed into place, so offline users can drop the original files into the
local folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.download import copy_verified, download, verify_file
from pipeline.data.loaders import _envi_header_for, _open_envi, load_cube, load_gt, resolve_key
from pipeline.errors import ChecksumError, DataError, ParamsError
from pipeline.io import write_json

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FileSpec",
    "fetch_dataset",
    "get_dataset",
    "load_manifest",
    "load_raw",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SOURCES = ("auto", "local", "package", "url")
DATA_DIR_ENV = "HSI_DATA_DIR"


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset and the places it can be obtained from."""

    filename: str
    key: str | None
    sha256: str | None
    size: int | None
    urls: tuple[str, ...] = ()
    package_path: str | None = None
    aliases: tuple[str, ...] = ()  # other names accepted for the file in a local data_dir


@dataclass(frozen=True)
class DatasetInfo:
    """A benchmark scene: its files, expected shape, class names, licence and citation."""

    name: str
    title: str
    class_names: tuple[str, ...]
    cube: FileSpec
    gt: FileSpec
    shape: tuple[int, int, int]
    pca_components: int
    rgb_bands: tuple[int, int, int]
    citation: str
    licence: str
    alternatives: tuple[tuple[FileSpec, FileSpec], ...] = ()


_EHU = "www.ehu.eus/ccwintco/uploads"
_EHU_ES = "www.ehu.es/ccwintco/uploads"


def _ehu(path: str, *, es: bool = False) -> tuple[str, ...]:
    """HTTPS first, then the plain-HTTP address every HSI toolbox (e.g. DeepHyperX) uses."""
    return (f"https://{_EHU}/{path}", f"http://{_EHU_ES if es else _EHU}/{path}")


_EHU_NOTE = (
    "Distributed by the Grupo de Inteligencia Computacional (GIC), UPV/EHU, "
    "'Hyperspectral Remote Sensing Scenes', "
    "https://www.ehu.eus/ccwintco/index.php/Hyperspectral_Remote_Sensing_Scenes"
)
_EHU_LICENCE = (
    "No licence stated by the distributor (GIC, UPV/EHU); public benchmark, "
    "free for research use with citation of the source"
)
_HAM_2005 = (
    "J. Ham, Y. Chen, M. M. Crawford, J. Ghosh, 'Investigation of the random forest framework "
    "for classification of hyperspectral data', IEEE Trans. Geosci. Remote Sens. 43(3), "
    "492-501, 2005"
)

_INDIAN_PINES_CLASSES = (
    "Alfalfa",
    "Corn-notill",
    "Corn-mintill",
    "Corn",
    "Grass-pasture",
    "Grass-trees",
    "Grass-pasture-mowed",
    "Hay-windrowed",
    "Oats",
    "Soybean-notill",
    "Soybean-mintill",
    "Soybean-clean",
    "Wheat",
    "Woods",
    "Buildings-Grass-Trees-Drives",
    "Stone-Steel-Towers",
)
_SALINAS_CLASSES = (
    "Brocoli_green_weeds_1",
    "Brocoli_green_weeds_2",
    "Fallow",
    "Fallow_rough_plow",
    "Fallow_smooth",
    "Stubble",
    "Celery",
    "Grapes_untrained",
    "Soil_vinyard_develop",
    "Corn_senesced_green_weeds",
    "Lettuce_romaine_4wk",
    "Lettuce_romaine_5wk",
    "Lettuce_romaine_6wk",
    "Lettuce_romaine_7wk",
    "Vinyard_untrained",
    "Vinyard_vertical_trellis",
)
_PAVIA_U_CLASSES = (
    "Asphalt",
    "Meadows",
    "Gravel",
    "Trees",
    "Painted metal sheets",
    "Bare Soil",
    "Bitumen",
    "Self-Blocking Bricks",
    "Shadows",
)
_PAVIA_C_CLASSES = (
    "Water",
    "Trees",
    "Asphalt",
    "Self-Blocking Bricks",
    "Bitumen",
    "Tiles",
    "Shadows",
    "Meadows",
    "Bare Soil",
)
_KSC_CLASSES = (
    "Scrub",
    "Willow swamp",
    "Cabbage palm hammock",
    "Cabbage palm/oak hammock",
    "Slash pine",
    "Oak/broadleaf hammock",
    "Hardwood swamp",
    "Graminoid marsh",
    "Spartina marsh",
    "Cattail marsh",
    "Salt marsh",
    "Mud flats",
    "Water",
)
_BOTSWANA_CLASSES = (
    "Water",
    "Hippo grass",
    "Floodplain grasses 1",
    "Floodplain grasses 2",
    "Reeds",
    "Riparian",
    "Firescar",
    "Island interior",
    "Acacia woodlands",
    "Acacia shrublands",
    "Acacia grasslands",
    "Short mopane",
    "Mixed mopane",
    "Exposed soils",
)

_AVIRIS_RGB = (43, 21, 11)
_ROSIS_RGB = (55, 41, 12)

DATASETS: dict[str, DatasetInfo] = {
    "indian_pines": DatasetInfo(
        name="indian_pines",
        title="Indian Pines (AVIRIS, 200 corrected bands)",
        class_names=_INDIAN_PINES_CLASSES,
        cube=FileSpec(
            filename="Indian_pines_corrected.npy",
            key=None,
            sha256="8f038e4d81569e38ebfc72a15c9984c150de42580ab260be10a13442e912e451",
            size=8410128,
            package_path="tensorly:datasets/data/Indian_pines_corrected.npy",
        ),
        gt=FileSpec(
            filename="Indian_pines_gt.npy",
            key=None,
            sha256="44610d21625b311b05b8e0c4ba9a6cc755c2fbb9df48e4d89419024aa6ad3f9d",
            size=21153,
            package_path="tensorly:datasets/data/Indian_pines_gt.npy",
        ),
        shape=(145, 145, 200),
        pca_components=30,
        rgb_bands=_AVIRIS_RGB,
        citation=(
            "M. F. Baumgardner, L. L. Biehl, D. A. Landgrebe (2015). 220 Band AVIRIS "
            "Hyperspectral Image Data Set: June 12, 1992 Indian Pine Test Site 3. Purdue "
            "University Research Repository. doi:10.4231/R7RX991C. Corrected 200-band cube and "
            "16-class ground truth as distributed by GIC UPV/EHU; the .npy copies ship in the "
            "PyPI package tensorly 0.10.0 (tensorly/datasets/data/)"
        ),
        licence="CC BY 3.0 (Purdue University Research Repository)",
        alternatives=(
            (
                FileSpec(
                    filename="Indian_pines_corrected.mat",
                    key="indian_pines_corrected",
                    sha256="ec2f8808710919d566f70f0d4aa885aae1ddfd42b734aba71c5e12ca65450939",
                    size=5953527,
                    urls=_ehu("6/67/Indian_pines_corrected.mat"),
                ),
                FileSpec(
                    filename="Indian_pines_gt.mat",
                    key="indian_pines_gt",
                    sha256="65c4687a8ab04f6da4789799bc3bc4f6e88bccac3ed6a2e6ae367e5e6b9e429c",
                    size=1125,
                    urls=_ehu("c/c4/Indian_pines_gt.mat"),
                ),
            ),
        ),
    ),
    "salinas": DatasetInfo(
        name="salinas",
        title="Salinas Valley (AVIRIS, 204 corrected bands)",
        class_names=_SALINAS_CLASSES,
        cube=FileSpec(
            filename="Salinas_corrected.mat",
            key="salinas_corrected",
            sha256="5ec1c0d22f56d18ecd336f8e35735863c0f160682e04e0c18ef3f89a3334d87d",
            size=26552770,
            urls=_ehu("a/a3/Salinas_corrected.mat"),
        ),
        gt=FileSpec(
            filename="Salinas_gt.mat",
            key="salinas_gt",
            sha256="ecfab4d31ef5553f097943235d8ea502038eb4a2067b2ad10b33e37c949955e2",
            size=4277,
            urls=_ehu("f/fa/Salinas_gt.mat"),
        ),
        shape=(512, 217, 204),
        pca_components=15,
        rgb_bands=_AVIRIS_RGB,
        citation=(
            "AVIRIS scene over Salinas Valley, California, 1998 (3.7 m pixels, 224 bands, 20 "
            "water-absorption bands removed). " + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "salinas_a": DatasetInfo(
        name="salinas_a",
        title="Salinas-A (AVIRIS sub-scene of Salinas, 204 corrected bands)",
        class_names=_SALINAS_CLASSES,
        cube=FileSpec(
            filename="SalinasA_corrected.mat",
            key="salinasA_corrected",
            sha256="d75684ed3ab71a1024cee0f9db9061f50a3523a92ff5edfbbb1eed976b9f1721",
            size=1539086,
            urls=_ehu("1/1a/SalinasA_corrected.mat"),
        ),
        gt=FileSpec(
            filename="SalinasA_gt.mat",
            key="salinasA_gt",
            sha256="17814c1d3296c0e29b27f320f2c4174d2a68adb87e376abe78f02923e2c2e454",
            size=587,
            urls=_ehu("a/aa/SalinasA_gt.mat"),
        ),
        shape=(83, 86, 204),
        pca_components=15,
        rgb_bands=_AVIRIS_RGB,
        citation=(
            "Salinas-A: 83x86 sub-scene of the AVIRIS Salinas Valley scene (1998). Labels keep "
            "the Salinas values {1, 10, 11, 12, 13, 14}; class_names is the full Salinas list. "
            + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "pavia_university": DatasetInfo(
        name="pavia_university",
        title="Pavia University (ROSIS-03, 103 bands)",
        class_names=_PAVIA_U_CLASSES,
        cube=FileSpec(
            filename="PaviaU.mat",
            key="paviaU",
            sha256="28447fa87f7a5797845e9a189c0da85e23b1d06a4ba7361e5ff44efbf834d2fb",
            size=34806917,
            urls=_ehu("e/ee/PaviaU.mat"),
        ),
        gt=FileSpec(
            filename="PaviaU_gt.mat",
            key="paviaU_gt",
            sha256="23f6a426928f9b32984adffe659e29f554f9fb6c93b5a107528d308d5087a829",
            size=11005,
            urls=_ehu("5/50/PaviaU_gt.mat"),
        ),
        shape=(610, 340, 103),
        pca_components=15,
        rgb_bands=_ROSIS_RGB,
        citation=(
            "ROSIS-03 scene over the University of Pavia, Italy (1.3 m pixels), courtesy of "
            "Prof. Paolo Gamba, Telecommunications and Remote Sensing Laboratory, University of "
            "Pavia. " + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "pavia_centre": DatasetInfo(
        name="pavia_centre",
        title="Pavia Centre (ROSIS-03, 102 bands)",
        class_names=_PAVIA_C_CLASSES,
        cube=FileSpec(
            filename="Pavia.mat",
            key="pavia",
            sha256="b60341da323fd271cd97dd6d7a69514d385ccd7fdfc5a60c4ff5994b047f152e",
            size=129624657,
            urls=_ehu("e/e3/Pavia.mat"),
        ),
        gt=FileSpec(
            filename="Pavia_gt.mat",
            key="pavia_gt",
            sha256="7eb54ab81b404dd3ae572e6d0ec211595029e5a847bec2cfb8f9e72d07066b69",
            size=34887,
            urls=_ehu("5/53/Pavia_gt.mat"),
            aliases=("paviaC_gt.mat",),
        ),
        shape=(1096, 715, 102),
        pca_components=15,
        rgb_bands=_ROSIS_RGB,
        citation=(
            "ROSIS-03 scene over the centre of Pavia, Italy (1.3 m pixels), courtesy of "
            "Prof. Paolo Gamba, Telecommunications and Remote Sensing Laboratory, University of "
            "Pavia. " + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "ksc": DatasetInfo(
        name="ksc",
        title="Kennedy Space Center (AVIRIS, 176 bands)",
        class_names=_KSC_CLASSES,
        cube=FileSpec(
            filename="KSC.mat",
            key="KSC",
            sha256="b1ad011cfdb65c853e4f9f6108ca4774467d87f90a5c23b74ff3a2984a3b4786",
            size=56824624,
            urls=_ehu("2/26/KSC.mat", es=True),
        ),
        gt=FileSpec(
            filename="KSC_gt.mat",
            key="KSC_gt",
            sha256="a1d6ab9293691006bd4d9742d1a1e1c141b1aaa5fbc5fa128b33c1d09038510b",
            size=3240,
            urls=_ehu("a/a6/KSC_gt.mat", es=True),
        ),
        shape=(512, 614, 176),
        pca_components=15,
        rgb_bands=_AVIRIS_RGB,
        citation=(
            "AVIRIS scene over Kennedy Space Center, Florida, 23 March 1996 (18 m pixels), "
            "Center for Space Research, University of Texas at Austin; "
            + _HAM_2005
            + ". "
            + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "botswana": DatasetInfo(
        name="botswana",
        title="Botswana, Okavango Delta (EO-1 Hyperion, 145 bands)",
        class_names=_BOTSWANA_CLASSES,
        cube=FileSpec(
            filename="Botswana.mat",
            key="Botswana",
            sha256="f1603903c844cdc2980550b0180688e8e1a72d4292595d1120e1dec2a80a91c7",
            size=78911133,
            urls=_ehu("7/72/Botswana.mat", es=True),
        ),
        gt=FileSpec(
            filename="Botswana_gt.mat",
            key="Botswana_gt",
            sha256="668394905e10e629c16584bfd02b0f533b96d6ba18a63274a94ff3a77126a887",
            size=4039,
            urls=_ehu("5/58/Botswana_gt.mat", es=True),
        ),
        shape=(1476, 256, 145),
        pca_components=15,
        rgb_bands=(75, 33, 15),
        citation=(
            "NASA EO-1 Hyperion scene over the Okavango Delta, Botswana, 31 May 2001 (30 m "
            "pixels), Center for Space Research, University of Texas at Austin; "
            + _HAM_2005
            + ". "
            + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
}

_CUSTOM_KEYS = {
    "cube",
    "gt",
    "cube_key",
    "gt_key",
    "class_names",
    "title",
    "pca_components",
    "rgb_bands",
    "citation",
    "licence",
}


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def get_dataset(name: str) -> DatasetInfo:
    """Return the registry entry for ``name``; unknown names raise ParamsError listing them."""
    key = _normalise(name)
    if key in DATASETS:
        return DATASETS[key]
    if key == "custom":
        raise ParamsError(
            "dataset 'custom' has no registry entry; call fetch_dataset('custom', out_dir, "
            "custom={'cube': ..., 'gt': ...})"
        )
    known = ", ".join([*DATASETS, "custom"])
    raise ParamsError(f"unknown dataset {name!r}; known datasets: {known}")


def fetch_dataset(
    name: str,
    out_dir: str | os.PathLike,
    *,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    custom: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Fetch dataset ``name`` into ``out_dir``, verify it, and write ``out_dir/manifest.json``.

    ``source`` is ``"auto"`` (local folder, then package, then URLs), ``"local"``,
    ``"package"`` or ``"url"``. The local folder is ``data_dir`` or ``$HSI_DATA_DIR``; a file
    is looked up there and in its ``<name>/`` subfolder. Files already in ``out_dir`` with the
    expected hash are kept. After fetching, cube and labels are loaded and their shapes checked
    against the registry. ``name="custom"`` copies the user's files given by ``custom`` (keys
    ``cube``, ``gt``, optional ``cube_key``, ``gt_key``, ``class_names``, ``title``,
    ``pca_components``, ``rgb_bands``, ``citation``, ``licence``). Returns the manifest.
    """
    if source not in SOURCES:
        raise ParamsError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if _normalise(name) == "custom":
        if custom is None:
            raise ParamsError("dataset 'custom' needs custom={'cube': path, 'gt': path, ...}")
        info, cube_rec, gt_rec = _fetch_custom(custom, out_dir)
        unknown: list[str] = []
    else:
        if custom is not None:
            raise ParamsError(f"custom=... is only allowed with dataset 'custom', not {name!r}")
        info = get_dataset(name)
        local = _local_dir(data_dir, source)
        previous = _previous_manifest(out_dir)
        info, cube_rec, gt_rec = _fetch_registered(info, out_dir, source, local, previous, progress)
        unknown = [spec.filename for spec in (info.cube, info.gt) if spec.sha256 is None]

    cube = load_cube(out_dir / cube_rec["file"], cube_rec["key"])
    gt = load_gt(out_dir / gt_rec["file"], gt_rec["key"])
    _check_arrays(info, cube, gt, out_dir)
    labels, counts = np.unique(gt[gt > 0], return_counts=True)

    manifest = {
        "dataset": info.name,
        "title": info.title,
        "licence": info.licence,
        "citation": info.citation,
        "class_names": list(info.class_names),
        "cube": cube_rec,
        "gt": gt_rec,
        "shape": list(info.shape),
        "dtype": str(cube.dtype),
        "pca_components": info.pca_components,
        "rgb_bands": list(info.rgb_bands),
        "labelled_pixels": int(counts.sum()),
        "label_counts": {str(int(k)): int(v) for k, v in zip(labels, counts, strict=True)},
        "sha256_recorded_unknown": unknown,
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def load_manifest(out_dir: str | os.PathLike) -> dict:
    """Read ``out_dir/manifest.json`` written by :func:`fetch_dataset`."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run fetch_dataset (the 'fetch' stage) first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest: {exc}") from exc
    for field in ("dataset", "cube", "gt", "shape", "class_names"):
        if field not in manifest:
            raise DataError(f"{path}: manifest lacks the field {field!r}")
    return manifest


def load_raw(out_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load ``(cube H×W×B, gt H×W integer, manifest)`` from a fetched dataset folder."""
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    cube = load_cube(out_dir / manifest["cube"]["file"], manifest["cube"].get("key"))
    gt = load_gt(out_dir / manifest["gt"]["file"], manifest["gt"].get("key"))
    if list(cube.shape) != list(manifest["shape"]) or gt.shape != cube.shape[:2]:
        raise DataError(
            f"{out_dir}: cube {cube.shape} / gt {gt.shape} do not match the manifest shape "
            f"{tuple(manifest['shape'])}; fetch the dataset again"
        )
    return cube, gt, manifest


def _local_dir(data_dir: str | os.PathLike | None, source: str) -> Path | None:
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise DataError(f"data_dir {path} does not exist or is not a directory")
        return path
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env)
        if path.is_dir():
            return path
        log.warning("$%s=%s is not a directory; ignoring it", DATA_DIR_ENV, env)
    if source == "local":
        raise ParamsError(f"source='local' needs data_dir=... or the ${DATA_DIR_ENV} variable")
    return None


def _previous_manifest(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _fetch_registered(
    info: DatasetInfo,
    out_dir: Path,
    source: str,
    local: Path | None,
    previous: dict,
    progress: bool,
) -> tuple[DatasetInfo, dict, dict]:
    pairs = [(info.cube, info.gt), *info.alternatives]
    failures: list[DataError] = []
    for cube_spec, gt_spec in pairs:
        written: list[Path] = []
        try:
            recs = [
                _obtain(spec, info.name, out_dir, source, local, previous, progress, written)
                for spec in (cube_spec, gt_spec)
            ]
        except DataError as exc:
            failures.append(exc)
            for path in written:
                path.unlink(missing_ok=True)
            continue
        return replace(info, cube=cube_spec, gt=gt_spec), recs[0], recs[1]
    where = f"${DATA_DIR_ENV} or data_dir" + (f" (now {local})" if local else "")
    error = ChecksumError if all(isinstance(e, ChecksumError) for e in failures) else DataError
    raise error(
        f"could not fetch dataset {info.name!r} with source={source!r}:\n  - "
        + "\n  - ".join(map(str, failures))
        + f"\nTo work offline, put the original files into {where} or its {info.name}/ "
        "subfolder; they are verified against the registry's size and sha256."
    )


def _obtain(
    spec: FileSpec,
    dataset: str,
    out_dir: Path,
    source: str,
    local: Path | None,
    previous: dict,
    progress: bool,
    written: list[Path],
) -> dict:
    dest = out_dir / spec.filename
    prev = _previous_record(previous, spec.filename)
    expected = spec.sha256 or prev.get("sha256")
    if dest.is_file() and expected:
        try:
            digest = verify_file(dest, sha256=expected, size=spec.size)
        except ChecksumError as exc:
            log.info("%s; fetching it again", exc)
        else:
            return _record(spec, digest, dest, prev.get("source", "existing"))

    candidates = _candidates(spec, dataset, source, local, progress)
    if not candidates:
        raise DataError(f"{spec.filename}: no {source!r} source available for this file")
    errors: list[DataError] = []
    for label, action in candidates:
        try:
            digest = action(dest)
        except DataError as exc:
            errors.append(exc)
            log.warning("%s: %s failed: %s", spec.filename, label, exc)
            continue
        written.append(dest)
        if spec.sha256 is None and not label.startswith("url:"):
            log.warning("sha256 unknown; recorded %s for %s (from %s)", digest, dest, label)
        return _record(spec, digest, dest, label)
    error = ChecksumError if all(isinstance(e, ChecksumError) for e in errors) else DataError
    raise error(f"{spec.filename}: every source failed ({'; '.join(map(str, errors))})")


def _candidates(
    spec: FileSpec, dataset: str, source: str, local: Path | None, progress: bool
) -> list[tuple[str, Callable[[Path], str]]]:
    out: list[tuple[str, Callable[[Path], str]]] = []

    def copier(src: Path) -> Callable[[Path], str]:
        return lambda dest: copy_verified(src, dest, sha256=spec.sha256, size=spec.size)

    if source in ("auto", "local") and local is not None:
        for base in (local, local / dataset):
            for fname in (spec.filename, *spec.aliases):
                if (base / fname).is_file():
                    out.append((f"local:{base / fname}", copier(base / fname)))
        if source == "local" and not out:
            raise DataError(
                f"{spec.filename}: not found in {local} or {local / dataset} "
                f"(names tried: {', '.join((spec.filename, *spec.aliases))})"
            )
    if source in ("auto", "package") and spec.package_path:
        try:
            path, label = _package_file(spec.package_path)
        except DataError as exc:
            if source == "package":
                raise
            log.info("%s", exc)
        else:
            out.append((label, copier(path)))
    if source in ("auto", "url"):
        for url in spec.urls:
            out.append(
                (
                    f"url:{url}",
                    lambda dest, url=url: download(
                        url, dest, sha256=spec.sha256, size=spec.size, progress=progress
                    ),
                )
            )
    return out


def _package_file(package_path: str) -> tuple[Path, str]:
    """Locate ``"pkg:rel/path"`` inside an installed package without importing it."""
    pkg, _, rel = package_path.partition(":")
    try:
        found = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise DataError(f"{package_path}: package {pkg!r} is not installed")
    try:
        version = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    for base in found.submodule_search_locations:
        path = Path(base) / rel
        if path.is_file():
            return path, f"package:{pkg}=={version}:{pkg}/{rel}"
    raise DataError(f"{package_path}: {rel} not found in package {pkg} {version}")


def _previous_record(previous: dict, filename: str) -> dict:
    for part in ("cube", "gt"):
        rec = previous.get(part)
        if isinstance(rec, dict) and rec.get("file") == filename:
            return rec
    return {}


def _record(spec: FileSpec, digest: str, path: Path, source: str) -> dict:
    return {
        "file": spec.filename,
        "key": spec.key,
        "sha256": digest,
        "size": path.stat().st_size,
        "source": source,
    }


def _check_arrays(info: DatasetInfo, cube: np.ndarray, gt: np.ndarray, out_dir: Path) -> None:
    where = f"{out_dir / info.cube.filename}"
    if tuple(cube.shape) != tuple(info.shape):
        raise DataError(
            f"{where}: cube shape {cube.shape} differs from the expected {tuple(info.shape)} "
            f"for dataset {info.name!r}"
        )
    if gt.shape != cube.shape[:2]:
        raise DataError(
            f"{out_dir / info.gt.filename}: label map shape {gt.shape} does not match the cube's "
            f"spatial shape {cube.shape[:2]}"
        )
    if gt.size and (int(gt.min()) < 0 or int(gt.max()) > len(info.class_names)):
        raise DataError(
            f"{out_dir / info.gt.filename}: labels span {int(gt.min())}..{int(gt.max())} but "
            f"dataset {info.name!r} has {len(info.class_names)} class names (labels 0..N)"
        )


def _fetch_custom(custom: Mapping[str, Any], out_dir: Path) -> tuple[DatasetInfo, dict, dict]:
    extra = set(custom) - _CUSTOM_KEYS
    if extra:
        raise ParamsError(
            f"custom: unknown keys {sorted(extra)}; allowed: {', '.join(sorted(_CUSTOM_KEYS))}"
        )
    for part in ("cube", "gt"):
        if not custom.get(part):
            raise ParamsError(f"custom: '{part}' (path to the file) is required")

    copied: dict[str, tuple[Path, str]] = {}  # output name -> (source file, sha256)
    records: dict[str, dict] = {}
    for part, ndim in (("cube", 3), ("gt", 2)):
        src = Path(custom[part])
        key = resolve_key(src, custom.get(f"{part}_key"), ndim=ndim)
        entries = []
        for f in _custom_files(src):
            dest = out_dir / f.name
            if f.name in copied:
                if copied[f.name][0] != f.resolve():
                    raise ParamsError(
                        f"custom: two different files are both named {f.name!r}; rename one"
                    )
            else:
                copied[f.name] = (f.resolve(), copy_verified(f, dest))
            entries.append({"file": f.name, "sha256": copied[f.name][1], "size": f.stat().st_size})
        first = entries[0]
        records[part] = {
            "file": first["file"],
            "key": key,
            "sha256": first["sha256"],
            "size": first["size"],
            "source": f"local:{src}",
        }
        if len(entries) > 1:
            records[part]["companions"] = entries[1:]

    cube = load_cube(out_dir / records["cube"]["file"], records["cube"]["key"])
    gt = load_gt(out_dir / records["gt"]["file"], records["gt"]["key"])
    bands = cube.shape[2]
    n_classes = int(gt.max()) if gt.size else 0
    names = custom.get("class_names")
    if names is None:
        names = [f"class {i}" for i in range(1, n_classes + 1)]
    elif len(names) < n_classes:
        raise ParamsError(
            f"custom: {len(names)} class_names given but the label map uses labels up to "
            f"{n_classes}"
        )
    rgb = custom.get("rgb_bands") or _default_rgb(bands)
    if len(rgb) != 3 or not all(0 <= int(b) < bands for b in rgb):
        raise ParamsError(f"custom: rgb_bands must be 3 band indices in 0..{bands - 1}; got {rgb}")
    info = DatasetInfo(
        name="custom",
        title=custom.get("title") or f"custom dataset ({Path(custom['cube']).name})",
        class_names=tuple(str(n) for n in names),
        cube=FileSpec(records["cube"]["file"], records["cube"]["key"], None, None),
        gt=FileSpec(records["gt"]["file"], records["gt"]["key"], None, None),
        shape=tuple(int(s) for s in cube.shape),
        pca_components=int(custom.get("pca_components") or min(30, bands)),
        rgb_bands=tuple(int(b) for b in rgb),
        citation=custom.get("citation") or "user-supplied data",
        licence=custom.get("licence") or "unknown (user-supplied data)",
    )
    return info, records["cube"], records["gt"]


def _custom_files(src: Path) -> list[Path]:
    """The file to copy first, then companions (an ENVI image's header or data file)."""
    if not src.is_file():
        raise DataError(f"{src}: file not found")
    hdr = _envi_header_for(src)
    if hdr is None:
        return [src]
    data = Path(_open_envi(src).filename)
    return [src, data if src == hdr else hdr]


def _default_rgb(bands: int) -> tuple[int, int, int]:
    """Red, green, blue picked at 3/4, 1/2 and 1/4 of the band range."""
    last = bands - 1
    return round(0.75 * last), round(0.5 * last), round(0.25 * last)
