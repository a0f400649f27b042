import numpy as np
import pytest
from sklearn.decomposition import PCA as SkPCA

from pipeline.data.pca import PCA, fit_pca
from pipeline.errors import ParamsError


@pytest.fixture
def pixels():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(5, 40))
    return rng.normal(size=(500, 5)) * [10, 5, 3, 1, 0.5] @ basis + rng.normal(size=(500, 40)) * 0.1


@pytest.mark.parametrize("whiten", [False, True])
def test_matches_sklearn(pixels, whiten):
    ours = fit_pca(pixels, 4, whiten=whiten)
    ref = SkPCA(n_components=4, whiten=whiten, svd_solver="full").fit(pixels)
    np.testing.assert_allclose(ours.explained_variance, ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(
        ours.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-8
    )
    np.testing.assert_allclose(ours.transform(pixels), ref.transform(pixels), rtol=1e-4, atol=1e-4)


def test_cube_shape_and_variance_order(pixels):
    cube = pixels.reshape(20, 25, 40)
    pca = fit_pca(pixels, 3)
    out = pca.transform(cube)
    assert out.shape == (20, 25, 3) and out.dtype == np.float32
    assert np.all(np.diff(pca.explained_variance) <= 0)
    assert 0 < pca.explained_variance_ratio.sum() <= 1


def test_global_scale_gives_unit_overall_std(pixels):
    pca = fit_pca(pixels, 5, scale="global")
    out = pca.transform(pixels)
    assert out.std() == pytest.approx(1.0, rel=1e-4)
    assert out[:, 0].std() > out[:, 4].std()


def test_fit_on_subset_transforms_everything(pixels):
    pca = fit_pca(pixels[:100], 3)
    assert pca.transform(pixels).shape == (500, 3)
    np.testing.assert_allclose(pca.mean, pixels[:100].mean(0))


def test_round_trip_arrays(pixels):
    pca = fit_pca(pixels, 3, whiten=True, scale="global")
    again = PCA.from_arrays(pca.to_arrays())
    np.testing.assert_array_equal(again.transform(pixels), pca.transform(pixels))


def test_errors(pixels):
    with pytest.raises(ParamsError, match="pca.components"):
        fit_pca(pixels, 41)
    with pytest.raises(ParamsError, match="bands"):
        fit_pca(pixels, 3).transform(np.zeros((4, 7)))
