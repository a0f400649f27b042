"""The dataset registry and fetcher: offline Indian Pines, local folders, URLs and custom files."""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import spectral.io.envi as envi

from pipeline.data import fetching as ds
from pipeline.data.custom import CUSTOM_KEYS
from pipeline.data.fetching import fetch_dataset, load_manifest, load_raw
from pipeline.data.registry import (
    DATASETS,
    PALETTE_16,
    DatasetInfo,
    FileSpec,
    default_palette,
    default_rgb_bands,
    get_dataset,
)
from pipeline.errors import ChecksumError, DataError, ParamsError
from pipeline.io import sha256_file

_TENSORLY = importlib.util.find_spec("tensorly")
needs_tensorly = pytest.mark.skipif(_TENSORLY is None, reason="tensorly is not installed")
IP = DATASETS["indian_pines"]


def _package_dir() -> Path:
    return Path(_TENSORLY.submodule_search_locations[0]) / "datasets" / "data"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No $HSI_DATA_DIR from the environment and no real network access."""
    monkeypatch.delenv(ds.DATA_DIR_ENV, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    real_download = ds.download

    def local_only(url, *args, **kwargs):
        if not url.startswith("http://127.0.0.1:"):
            raise AssertionError(f"test tried to reach the network: {url}")
        return real_download(url, *args, **{**kwargs, "retries": 0, "backoff": 0.0})

    monkeypatch.setattr(ds, "download", local_only)


@needs_tensorly
def test_indian_pines_offline_from_package(tmp_path):
    out = tmp_path / "raw" / "indian_pines"
    manifest = fetch_dataset("indian_pines", out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "Indian_pines_corrected.npy",
        "Indian_pines_gt.npy",
        "manifest.json",
    ]
    assert sha256_file(out / "Indian_pines_corrected.npy") == IP.cube.sha256
    assert sha256_file(out / "Indian_pines_gt.npy") == IP.gt.sha256
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "indian_pines"
    assert manifest["cube"]["sha256"] == IP.cube.sha256
    assert manifest["cube"]["size"] == 8410128
    assert manifest["cube"]["source"].startswith("package:tensorly==")
    assert manifest["gt"]["file"] == "Indian_pines_gt.npy"
    assert manifest["shape"] == [145, 145, 200]
    assert manifest["pca_components"] == 30
    assert len(manifest["class_names"]) == 16
    assert manifest["licence"].startswith("CC BY 3.0")
    assert "10.4231/R7RX991C" in manifest["citation"]
    assert manifest["sha256_recorded_unknown"] == []
    assert manifest["labelled_pixels"] == 10249
    assert manifest["rgb_bands"] == list(IP.rgb_bands)
    assert manifest["palette"] == [list(c) for c in PALETTE_16]

    cube, gt, loaded = load_raw(out)
    assert cube.shape == (145, 145, 200) and cube.dtype == np.uint16
    assert (cube.min(), cube.max()) == (955, 9604)
    assert gt.shape == (145, 145) and gt.dtype.kind in "iu"
    assert int((gt > 0).sum()) == 10249
    assert sorted(np.unique(gt[gt > 0]).tolist()) == list(range(1, 17))
    assert loaded == manifest
    assert load_manifest(out) == manifest


@needs_tensorly
def test_existing_files_are_not_fetched_again(tmp_path, monkeypatch):
    out = tmp_path / "ip"
    fetch_dataset("indian_pines", out, progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("file copied although it was present and verified")

    monkeypatch.setattr(ds, "copy_verified", forbidden)
    manifest = fetch_dataset("indian_pines", out, progress=False)
    assert manifest["cube"]["source"].startswith("package:")


@needs_tensorly
def test_corrupted_existing_file_is_replaced(tmp_path):
    out = tmp_path / "ip"
    fetch_dataset("indian_pines", out, progress=False)
    (out / "Indian_pines_gt.npy").write_bytes(b"garbage")
    fetch_dataset("indian_pines", out, progress=False)
    assert sha256_file(out / "Indian_pines_gt.npy") == IP.gt.sha256


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(ParamsError) as err:
        fetch_dataset("indian_pine", tmp_path)
    msg = str(err.value)
    assert "indian_pine'" in msg
    for name in (*DATASETS, "custom"):
        assert name in msg
    with pytest.raises(ParamsError, match="known datasets"):
        get_dataset("mnist")
    assert get_dataset("Pavia-University") is DATASETS["pavia_university"]


def test_registry_is_consistent():
    expected = {
        "indian_pines": ((145, 145, 200), 16),
        "salinas": ((512, 217, 204), 16),
        "salinas_a": ((83, 86, 204), 16),
        "pavia_university": ((610, 340, 103), 9),
        "pavia_centre": ((1096, 715, 102), 9),
        "ksc": ((512, 614, 176), 13),
        "botswana": ((1476, 256, 145), 14),
    }
    assert set(DATASETS) == set(expected)
    for name, info in DATASETS.items():
        assert info.name == name
        assert (info.shape, len(info.class_names)) == expected[name]
        assert all(0 <= b < info.shape[2] for b in info.rgb_bands)
        assert len(info.palette) == len(info.class_names)
        assert len(set(info.palette)) == len(info.palette)
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in info.palette)
        assert 0 < info.pca_components <= info.shape[2]
        assert info.citation and info.licence
        for cube, gt in [(info.cube, info.gt), *info.alternatives]:
            for spec in (cube, gt):
                assert spec.urls or spec.package_path
                assert spec.sha256 is None or len(spec.sha256) == 64
                assert all(u.startswith(("http://", "https://")) for u in spec.urls)


def _copy_package_files(folder: Path) -> None:
    folder.mkdir(parents=True)
    for spec in (IP.cube, IP.gt):
        shutil.copyfile(_package_dir() / spec.filename, folder / spec.filename)


@needs_tensorly
@pytest.mark.parametrize("layout", ["flat", "subfolder", "env"])
def test_local_data_dir(tmp_path, monkeypatch, layout):
    data_dir = tmp_path / "downloads"
    _copy_package_files(data_dir / "indian_pines" if layout == "subfolder" else data_dir)
    kwargs = {"data_dir": data_dir}
    if layout == "env":
        monkeypatch.setenv(ds.DATA_DIR_ENV, str(data_dir))
        kwargs = {}
    manifest = fetch_dataset("indian_pines", tmp_path / "out", source="local", **kwargs)
    assert manifest["cube"]["source"] == "local:" + str(
        (data_dir / "indian_pines" if layout == "subfolder" else data_dir)
        / "Indian_pines_corrected.npy"
    )
    assert sha256_file(tmp_path / "out" / "Indian_pines_corrected.npy") == IP.cube.sha256


@needs_tensorly
def test_local_file_with_wrong_hash(tmp_path):
    data_dir = tmp_path / "downloads"
    _copy_package_files(data_dir)
    gt = data_dir / "Indian_pines_gt.npy"
    arr = np.load(gt)
    arr[0, 0] = 7
    np.save(gt, arr)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"sha256 mismatch.*Indian_pines_gt\.npy"):
        fetch_dataset("indian_pines", out, source="local", data_dir=data_dir)
    assert not (out / "Indian_pines_gt.npy").exists()
    assert not (out / "Indian_pines_corrected.npy").exists()
    assert not (out / "manifest.json").exists()
    # never a silent switch to the package's copy (a cube and labels from different sources)
    with pytest.raises(DataError, match=r"not the expected Indian_pines_gt\.npy.*no other source"):
        fetch_dataset("indian_pines", out, source="auto", data_dir=data_dir)
    assert not out.exists()


def test_bad_source_arguments(tmp_path):
    with pytest.raises(ParamsError, match="source must be one of"):
        fetch_dataset("indian_pines", tmp_path, source="ftp")
    with pytest.raises(ParamsError, match="HSI_DATA_DIR"):
        fetch_dataset("indian_pines", tmp_path, source="local")
    with pytest.raises(DataError, match="does not exist"):
        fetch_dataset("indian_pines", tmp_path, data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match="manifest not found"):
        load_manifest(tmp_path)


# --- URL source and alternatives, against a local HTTP server -----------------------------


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _tiny(root: Path, base: str, *, cube_sha: str | None = "auto") -> DatasetInfo:
    cube = np.arange(4 * 3 * 5, dtype=np.uint16).reshape(4, 3, 5)
    gt = np.array([[0, 1, 2], [2, 1, 0], [1, 1, 1], [0, 0, 2]], dtype=np.uint8)
    scipy.io.savemat(root / "tiny.mat", {"tiny": cube})
    scipy.io.savemat(root / "tiny_gt.mat", {"tiny_gt": gt})
    sha = sha256_file(root / "tiny.mat") if cube_sha == "auto" else cube_sha
    return DatasetInfo(
        name="tiny",
        title="Tiny test scene",
        class_names=("a", "b"),
        cube=FileSpec(
            "tiny.mat", "tiny", sha, (root / "tiny.mat").stat().st_size, urls=(f"{base}/tiny.mat",)
        ),
        gt=FileSpec("tiny_gt.mat", "tiny_gt", None, None, urls=(f"{base}/tiny_gt.mat",)),
        shape=(4, 3, 5),
        pca_components=3,
        rgb_bands=(4, 2, 0),
        palette=PALETTE_16[:2],
        citation="test",
        licence="CC0",
    )


def test_url_source_records_unknown_hash(www, tmp_path, monkeypatch, caplog):
    root, base = www
    info = _tiny(root, base)
    monkeypatch.setitem(DATASETS, "tiny", info)
    out = tmp_path / "out"
    manifest = fetch_dataset("tiny", out, source="url", progress=False)
    gt_sha = sha256_file(root / "tiny_gt.mat")
    assert manifest["cube"]["source"] == f"url:{base}/tiny.mat"
    assert manifest["gt"]["sha256"] == gt_sha
    assert manifest["sha256_recorded_unknown"] == ["tiny_gt.mat"]
    assert f"sha256 unknown; recorded {gt_sha}" in caplog.text
    assert manifest["label_counts"] == {"1": 5, "2": 3}
    cube, gt, _ = load_raw(out)
    assert cube.shape == (4, 3, 5) and gt.shape == (4, 3)

    (root / "tiny_gt.mat").unlink()  # the recorded hash lets the second fetch skip it
    again = fetch_dataset("tiny", out, source="url", progress=False)
    assert again["gt"]["sha256"] == gt_sha


def test_alternative_used_when_primary_fails(www, tmp_path, monkeypatch):
    root, base = www
    tiny = _tiny(root, base)
    broken = FileSpec("tiny.npy", None, None, None, urls=(f"{base}/absent.npy",))
    info = DatasetInfo(**{**tiny.__dict__, "cube": broken, "alternatives": ((tiny.cube, tiny.gt),)})
    monkeypatch.setitem(DATASETS, "tiny", info)
    manifest = fetch_dataset("tiny", tmp_path / "out", progress=False)
    assert manifest["cube"]["file"] == "tiny.mat"
    assert manifest["cube"]["key"] == "tiny"


def test_checksum_mismatch_fails_cleanly(www, tmp_path, monkeypatch):
    root, base = www
    monkeypatch.setitem(DATASETS, "tiny", _tiny(root, base, cube_sha="0" * 64))
    out = tmp_path / "out"
    with pytest.raises(ChecksumError, match=r"(?s)could not fetch dataset 'tiny'.*sha256 mismatch"):
        fetch_dataset("tiny", out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_shape_mismatch(www, tmp_path, monkeypatch):
    root, base = www
    tiny = _tiny(root, base)
    monkeypatch.setitem(DATASETS, "tiny", DatasetInfo(**{**tiny.__dict__, "shape": (4, 3, 6)}))
    with pytest.raises(DataError, match=r"tiny\.mat: cube shape \(4, 3, 5\) differs.*\(4, 3, 6\)"):
        fetch_dataset("tiny", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


# --- custom datasets ----------------------------------------------------------------------


def test_custom_single_mat(tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    cube = np.random.default_rng(1).random((6, 4, 12)).astype(np.float32)
    gt = np.zeros((6, 4), dtype=np.float64)
    gt[1:3, 1:3] = 3
    gt[4, 0] = 1
    scipy.io.savemat(src / "scene.mat", {"img": cube, "labels": gt})
    custom = {"cube": str(src / "scene.mat"), "gt": str(src / "scene.mat")}
    manifest = fetch_dataset("custom", tmp_path / "out", custom=custom)
    assert manifest["dataset"] == "custom"
    assert manifest["class_names"] == ["class 1", "class 3"]  # no phantom class 2
    assert manifest["cube"]["key"] == "img" and manifest["gt"]["key"] == "labels"
    assert manifest["cube"]["file"] == manifest["gt"]["file"] == "scene.mat"
    assert manifest["shape"] == [6, 4, 12]
    assert manifest["pca_components"] == 12
    assert manifest["rgb_bands"] == list(default_rgb_bands(12))
    assert manifest["palette"] == [list(c) for c in default_palette(2)]
    c, g, _ = load_raw(tmp_path / "out")
    np.testing.assert_array_equal(c, cube)
    assert g.dtype.kind in "iu" and int(g.max()) == 2 and manifest["gt"]["label_values"] == [1, 3]


def test_custom_envi_and_npy(tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    cube = np.random.default_rng(2).integers(0, 999, (5, 7, 40)).astype(np.int16)
    gt = np.random.default_rng(3).integers(0, 3, (5, 7)).astype(np.int32)
    envi.save_image(str(src / "scene.hdr"), cube, dtype=np.int16, ext=".img")
    np.save(src / "labels.npy", gt)
    custom = {
        "cube": str(src / "scene.hdr"),
        "gt": str(src / "labels.npy"),
        "class_names": ["soil", "water"],
        "title": "My field",
    }
    out = tmp_path / "out"
    manifest = fetch_dataset("custom", out, custom=custom)
    assert manifest["title"] == "My field"
    assert manifest["class_names"] == ["soil", "water"]
    assert manifest["pca_components"] == 30
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.npy",
        "manifest.json",
        "scene.hdr",
        "scene.img",
    ]
    assert manifest["cube"]["companions"][0]["file"] == "scene.img"
    c, g, _ = load_raw(out)
    np.testing.assert_array_equal(c, cube)
    np.testing.assert_array_equal(g, gt)


def test_custom_errors(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((3, 3, 4), dtype=np.float32))
    np.save(tmp_path / "gt.npy", np.full((3, 3), 5, dtype=np.uint8))
    np.save(tmp_path / "gt_bad.npy", np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(ParamsError, match="custom="):
        fetch_dataset("custom", tmp_path / "o1")
    with pytest.raises(ParamsError, match="'gt'"):
        fetch_dataset("custom", tmp_path / "o2", custom={"cube": str(tmp_path / "cube.npy")})
    with pytest.raises(ParamsError, match="unknown keys"):
        fetch_dataset("custom", tmp_path / "o3", custom={"cube": "a", "gt": "b", "cub_key": "x"})
    with pytest.raises(ParamsError, match="2 class_names.*5"):
        fetch_dataset(
            "custom",
            tmp_path / "o4",
            custom={
                "cube": str(tmp_path / "cube.npy"),
                "gt": str(tmp_path / "gt.npy"),
                "class_names": ["a", "b"],
            },
        )
    with pytest.raises(DataError, match=r"label map shape \(2, 3\)"):
        fetch_dataset(
            "custom",
            tmp_path / "o5",
            custom={"cube": str(tmp_path / "cube.npy"), "gt": str(tmp_path / "gt_bad.npy")},
        )
    with pytest.raises(DataError, match=r"absent\.mat: file not found"):
        fetch_dataset(
            "custom", tmp_path / "o6", custom={"cube": str(tmp_path / "absent.mat"), "gt": "x"}
        )
    with pytest.raises(ParamsError, match="only allowed with dataset 'custom'"):
        fetch_dataset("indian_pines", tmp_path / "o7", custom={"cube": "a", "gt": "b"})


def test_checksum_error_is_a_data_error():
    assert issubclass(ChecksumError, DataError)


def test_default_palette_extends_the_classic_map():
    assert default_palette(9) == PALETTE_16[:9]
    big = default_palette(40)
    assert big[:16] == PALETTE_16 and big == default_palette(41)[:40]
    assert len(set(big)) == 40 and (0, 0, 0) not in big


def test_default_rgb_bands_put_long_wavelengths_in_red():
    assert default_rgb_bands(101) == (75, 50, 25)
    r, g, b = default_rgb_bands(3)
    assert r > g > b


def test_custom_keys_match_the_params_schema():
    from pipeline.params import CustomDataset

    assert set(CustomDataset().keys()) == set(CUSTOM_KEYS)


def test_load_raw_crops_cube_and_labels(tmp_path):
    cube = np.random.default_rng(4).random((6, 5, 3)).astype(np.float32)
    gt = np.ones((6, 5), dtype=np.uint8)
    np.save(tmp_path / "c.npy", cube)
    np.save(tmp_path / "g.npy", gt)
    out = tmp_path / "out"
    fetch_dataset(
        "custom", out, custom={"cube": str(tmp_path / "c.npy"), "gt": str(tmp_path / "g.npy")}
    )
    c, g, _ = load_raw(out, [1, 4, 2, 5])
    np.testing.assert_array_equal(c, cube[1:4, 2:5])
    assert g.shape == (3, 3)
    assert load_raw(out, None)[0].shape == (6, 5, 3)
    with pytest.raises(DataError, match=r"'dataset.crop' = \[6, 9, 0, 2\] leaves nothing"):
        load_raw(out, [6, 9, 0, 2])
