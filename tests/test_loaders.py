"""Round-trips for every supported format and the errors a user sees for bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
import spectral.io.envi as envi

from pipeline.data.loaders import (
    detect_format,
    list_keys,
    load_array,
    load_cube,
    load_gt,
    resolve_key,
)
from pipeline.errors import DataError

RNG = np.random.default_rng(0)
CUBE = RNG.integers(0, 5000, size=(7, 5, 4)).astype(np.int16)
GT = RNG.integers(0, 4, size=(7, 5)).astype(np.uint8)


def write_mat73(path, arrays: dict, *, userblock: bool = True) -> None:
    """Write arrays the way MATLAB -v7.3 does: transposed datasets with a MATLAB_class attribute."""
    kwargs = {"userblock_size": 512} if userblock else {}
    with h5py.File(path, "w", **kwargs) as f:
        for name, arr in arrays.items():
            ds = f.create_dataset(name, data=np.asarray(arr).T)
            ds.attrs["MATLAB_class"] = np.bytes_(
                {"float64": "double", "float32": "single"}.get(arr.dtype.name, arr.dtype.name)
            )
    if userblock:
        text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
        text += b"HDF5 schema 1.00 ."
        header = text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM"
        with open(path, "r+b") as f:
            f.write(header.ljust(512, b"\0"))


def test_mat_v5_round_trip_and_auto_key(tmp_path):
    path = tmp_path / "scene.mat"
    scipy.io.savemat(path, {"cube": CUBE, "gt": GT})
    assert detect_format(path) == "mat5"
    assert list_keys(path) == {"cube": (7, 5, 4), "gt": (7, 5)}
    np.testing.assert_array_equal(load_cube(path), CUBE)
    np.testing.assert_array_equal(load_gt(path), GT)
    np.testing.assert_array_equal(load_array(path, "gt"), GT)
    assert resolve_key(path, ndim=3) == "cube"


@pytest.mark.parametrize("userblock", [True, False])
def test_mat_v73_equals_loadmat(tmp_path, userblock):
    v5, v73 = tmp_path / "v5.mat", tmp_path / "v73.mat"
    scipy.io.savemat(v5, {"cube": CUBE, "gt": GT})
    write_mat73(v73, {"cube": CUBE, "gt": GT}, userblock=userblock)
    assert detect_format(v73) == "mat73"
    if userblock:
        with pytest.raises(NotImplementedError):
            scipy.io.loadmat(v73)
    ref = scipy.io.loadmat(v5)
    assert list_keys(v73) == {"cube": (7, 5, 4), "gt": (7, 5)}
    cube = load_cube(v73)
    np.testing.assert_array_equal(cube, ref["cube"])
    assert cube.dtype == ref["cube"].dtype
    np.testing.assert_array_equal(load_gt(v73), ref["gt"])


def test_npy_round_trip(tmp_path):
    path = tmp_path / "cube.npy"
    np.save(path, np.asfortranarray(CUBE))
    assert detect_format(path) == "npy"
    assert list_keys(path) == {"cube": (7, 5, 4)}
    np.testing.assert_array_equal(load_cube(path, key="ignored"), CUBE)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_round_trip(tmp_path, interleave):
    hdr = tmp_path / "scene.hdr"
    envi.save_image(str(hdr), CUBE, dtype=np.int16, interleave=interleave, ext=".img")
    assert detect_format(hdr) == "envi"
    cube = load_cube(hdr)
    assert cube.dtype == np.int16
    np.testing.assert_array_equal(cube, CUBE)
    np.testing.assert_array_equal(load_cube(tmp_path / "scene.img"), CUBE)


def test_envi_single_band_label_map(tmp_path):
    hdr = tmp_path / "labels.hdr"
    envi.save_image(str(hdr), GT[:, :, None], dtype=np.uint8, ext="")
    gt = load_gt(hdr)
    assert gt.shape == GT.shape
    np.testing.assert_array_equal(gt, GT)


def test_wrong_key_lists_keys_found(tmp_path):
    path = tmp_path / "scene.mat"
    scipy.io.savemat(path, {"cube": CUBE, "gt": GT})
    with pytest.raises(DataError) as err:
        load_cube(path, key="indian_pines_corrected")
    msg = str(err.value)
    assert "scene.mat" in msg and "indian_pines_corrected" in msg
    assert "'cube' (7, 5, 4)" in msg and "'gt' (7, 5)" in msg


def test_wrong_key_v73(tmp_path):
    path = tmp_path / "big.mat"
    write_mat73(path, {"data": CUBE})
    with pytest.raises(DataError, match=r"big\.mat.*'nope'.*'data' \(7, 5, 4\)"):
        load_cube(path, key="nope")


def test_ambiguous_keys(tmp_path):
    path = tmp_path / "two.mat"
    scipy.io.savemat(path, {"a": CUBE, "b": CUBE + 1, "gt": GT})
    with pytest.raises(DataError) as err:
        load_cube(path)
    msg = str(err.value)
    assert "two.mat" in msg and "'a'" in msg and "'b'" in msg
    np.testing.assert_array_equal(load_gt(path), GT)
    np.testing.assert_array_equal(load_cube(path, "b"), CUBE + 1)


def test_no_candidate(tmp_path):
    path = tmp_path / "flat.mat"
    scipy.io.savemat(path, {"gt": GT})
    with pytest.raises(DataError, match=r"flat\.mat.*no numeric 3-D arrays"):
        load_cube(path)


@pytest.mark.parametrize(
    "name, content",
    [
        ("random.mat", RNG.bytes(4096)),
        ("header_only.mat", b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 4),
        ("random.npy", RNG.bytes(1000)),
        ("bad.h5.mat", b"\x89HDF\r\n\x1a\n" + RNG.bytes(2000)),
    ],
)
def test_corrupt_file_names_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        load_cube(path)


def test_truncated_files(tmp_path):
    good = tmp_path / "good.mat"
    scipy.io.savemat(good, {"cube": CUBE})
    cut = tmp_path / "cut.mat"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.mat"):
        load_cube(cut)
    npy = tmp_path / "cut.npy"
    np.save(npy, CUBE)
    npy.write_bytes(npy.read_bytes()[:150])
    with pytest.raises(DataError, match=r"cut\.npy"):
        load_cube(npy)
    hdr = tmp_path / "cut.hdr"
    envi.save_image(str(hdr), CUBE, dtype=np.int16, ext=".img")
    img = tmp_path / "cut.img"
    img.write_bytes(img.read_bytes()[:50])
    with pytest.raises(DataError, match=r"cut\.img.*truncated"):
        load_cube(hdr)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"absent\.mat: file not found"):
        load_cube(tmp_path / "absent.mat")


def test_envi_header_without_data(tmp_path):
    hdr = tmp_path / "lonely.hdr"
    envi.save_image(str(hdr), CUBE, dtype=np.int16, ext=".img")
    (tmp_path / "lonely.img").unlink()
    with pytest.raises(DataError, match=r"lonely\.hdr.*data file not found"):
        load_cube(hdr)


def test_cube_dimension_checked(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, GT)
    with pytest.raises(DataError, match=r"flat\.npy.*3-D.*\(7, 5\)"):
        load_cube(path)


def test_gt_float_integral_is_cast(tmp_path):
    path = tmp_path / "gt.mat"
    scipy.io.savemat(path, {"gt": GT.astype(np.float64)})
    gt = load_gt(path)
    assert gt.dtype.kind in "iu"
    np.testing.assert_array_equal(gt, GT)


def test_gt_non_integral_rejected(tmp_path):
    path = tmp_path / "gt.npy"
    np.save(path, GT + 0.5)
    with pytest.raises(DataError, match=r"gt\.npy.*non-integral"):
        load_gt(path)


def test_non_numeric_key_rejected(tmp_path):
    path = tmp_path / "mixed.mat"
    scipy.io.savemat(path, {"cube": CUBE, "note": "hello"})
    with pytest.raises(DataError, match=r"mixed\.mat.*'note'.*char"):
        load_array(path, "note")
    np.testing.assert_array_equal(load_cube(path), CUBE)


def test_unknown_format(tmp_path):
    path = tmp_path / "scene.tif"
    path.write_bytes(b"II*\x00" + RNG.bytes(100))
    with pytest.raises(DataError, match=r"scene\.tif.*unrecognised"):
        load_cube(path)
