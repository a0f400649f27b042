"""Patch gathering equals naive slicing of np.pad, for both pad modes and both libraries."""

import numpy as np
import pytest
import torch

from pipeline.data.patches import gather_patches, iter_patch_batches, pad_cube
from pipeline.errors import DataError, ParamsError

H, W, K, P = 13, 17, 4, 7
R = P // 2
NP_MODE = {"zero": "constant", "reflect": "reflect"}


def make_cube(seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((H, W, K)).astype(dtype)


def coordinates(seed=1):
    """Random pixels plus every corner and a pixel on each border."""
    rng = np.random.default_rng(seed)
    rows = list(rng.integers(0, H, 40)) + [0, 0, H - 1, H - 1, 0, H - 1, 5, 6]
    cols = list(rng.integers(0, W, 40)) + [0, W - 1, 0, W - 1, 8, 9, 0, W - 1]
    return np.array(rows), np.array(cols)


def naive_patches(cube, rows, cols, mode):
    """Reference: np.pad the (H, W, K) cube, slice one patch at a time, reorder to (1, K, P, P)."""
    padded = np.pad(cube, ((R, R), (R, R), (0, 0)), mode=NP_MODE[mode])
    pairs = zip(rows, cols, strict=True)
    return np.stack([padded[r : r + P, c : c + P, :].transpose(2, 0, 1)[None] for r, c in pairs])


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_pad_cube_is_channels_first_np_pad(mode):
    cube = make_cube()
    padded = pad_cube(cube, P, mode)
    expected = np.pad(cube, ((R, R), (R, R), (0, 0)), mode=NP_MODE[mode]).transpose(2, 0, 1)
    assert padded.shape == (K, H + 2 * R, W + 2 * R) and padded.flags.c_contiguous
    assert padded.dtype == cube.dtype
    np.testing.assert_array_equal(padded, expected)
    padded_t = pad_cube(torch.from_numpy(cube), P, mode)
    assert isinstance(padded_t, torch.Tensor) and padded_t.is_contiguous()
    assert padded_t.dtype == torch.float32
    np.testing.assert_array_equal(padded_t.numpy(), expected)


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_gather_numpy_matches_naive_slicing(mode):
    cube = make_cube()
    rows, cols = coordinates()
    out = gather_patches(pad_cube(cube, P, mode), rows, cols, P)
    assert isinstance(out, np.ndarray) and out.shape == (len(rows), 1, K, P, P)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, naive_patches(cube, rows, cols, mode))


@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gather_torch_matches_naive_slicing(mode, dtype):
    cube = make_cube()
    rows, cols = coordinates(2)
    padded = pad_cube(torch.from_numpy(cube).to(dtype), P, mode)
    out = gather_patches(padded, torch.from_numpy(rows), torch.from_numpy(cols), P)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype
    assert out.shape == (len(rows), 1, K, P, P) and out.device == padded.device
    expected = naive_patches(torch.from_numpy(cube).to(dtype).double().numpy(), rows, cols, mode)
    np.testing.assert_array_equal(out.double().numpy(), expected)
    from_numpy_coords = gather_patches(padded, rows, cols, P)
    assert torch.equal(out, from_numpy_coords)


def test_gather_torch_keeps_autograd():
    cube = torch.from_numpy(make_cube()).requires_grad_(True)
    rows, cols = coordinates(3)
    out = gather_patches(pad_cube(cube, P), rows, cols, P)
    out.sum().backward()
    assert cube.grad is not None and cube.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gather_cuda_stays_on_device():
    cube = torch.from_numpy(make_cube()).cuda()
    rows, cols = coordinates(4)
    padded = pad_cube(cube, P, "reflect")
    out = gather_patches(padded, torch.from_numpy(rows).cuda(), torch.from_numpy(cols).cuda(), P)
    assert out.is_cuda
    np.testing.assert_array_equal(
        out.cpu().numpy(), naive_patches(cube.cpu().numpy(), rows, cols, "reflect")
    )


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_batches_cover_all_coordinates_in_order(lib):
    cube = make_cube()
    rows, cols = coordinates(5)
    padded = pad_cube(torch.from_numpy(cube) if lib == "torch" else cube, P)
    starts, parts = [], []
    for start, patches in iter_patch_batches(padded, rows, cols, P, batch_size=9):
        starts.append(start)
        parts.append(np.asarray(patches))
    assert starts == list(range(0, len(rows), 9))
    assert [len(p) for p in parts[:-1]] == [9] * (len(parts) - 1)
    np.testing.assert_array_equal(np.concatenate(parts), naive_patches(cube, rows, cols, "zero"))
    assert list(iter_patch_batches(padded, rows[:0], cols[:0], P, 4)) == []


def test_patch_size_one_is_the_pixel_spectrum():
    cube = make_cube()
    rows, cols = coordinates(6)
    out = gather_patches(pad_cube(cube, 1, "reflect"), rows, cols, 1)
    np.testing.assert_array_equal(out[:, 0, :, 0, 0], cube[rows, cols])


def test_bad_arguments():
    cube = make_cube()
    padded = pad_cube(cube, P)
    with pytest.raises(ParamsError, match="patch_size"):
        pad_cube(cube, 6)
    with pytest.raises(ParamsError, match="mode"):
        pad_cube(cube, P, "edge")
    with pytest.raises(ParamsError, match="patch_size"):
        pad_cube(cube, 2 * H + 1, "reflect")
    with pytest.raises(DataError, match="rows"):
        gather_patches(padded, [H], [0], P)
    with pytest.raises(DataError, match="cols"):
        gather_patches(padded, [0], [-1], P)
    with pytest.raises(DataError, match="differ"):
        gather_patches(padded, [0, 1], [0], P)
    with pytest.raises(DataError, match="integers"):
        gather_patches(padded, [0.5], [0], P)
    with pytest.raises(ParamsError, match="batch_size"):
        next(iter_patch_batches(padded, [0], [0], P, 0))
    with pytest.raises(DataError, match="rows"):
        gather_patches(torch.from_numpy(padded), torch.tensor([H]), torch.tensor([0]), P)
