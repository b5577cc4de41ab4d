"""scVI latents (nichekd[scvi]): batch-aware over libraries, fitted or loaded, used by the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dataset_path

import nichekd as nk

pytest.importorskip("scvi", reason="scvi-tools is not installed (pip install 'nichekd[scvi]')")


@pytest.fixture(scope="module")
def mob():
    torch.set_num_threads(1)
    return nk.datasets.st_mob(dataset_path("st_mob").parent, sections=("MOB1", "MOB3"))


@pytest.mark.realdata
@pytest.mark.slow
def test_scvi_latent_on_st_mob_fit_save_load_and_teacher(mob, tmp_path):
    t = mob["table"]
    x_before = t.X.copy()
    nk.pp.scvi_latent(mob, max_epochs=5, n_latent=8, save_path=tmp_path / "scvi", progress=False)
    z = t.obsm["X_scVI"]
    assert z.shape == (t.n_obs, 8) and z.dtype == np.float32 and np.isfinite(z).all()
    params = t.uns["X_scVI"]["params"]
    assert params["batch_key"] == "library" and params["max_epochs"] == 5
    assert len(t.uns["X_scVI"]["elbo_train"]) == 5
    assert (t.X != x_before).nnz == 0 and "_scvi_uuid" not in t.uns  # the user's table is untouched
    # same seed, same latent
    again = nk.pp.scvi_latent(mob, max_epochs=5, n_latent=8, progress=False, copy=True)
    np.testing.assert_allclose(again.obsm["X_scVI"], z, atol=1e-5)
    # a saved model gives the same latent without training
    loaded = nk.pp.scvi_latent(mob, model_path=tmp_path / "scvi", progress=False, copy=True)
    np.testing.assert_allclose(loaded.obsm["X_scVI"], z, atol=1e-5)
    assert loaded.uns["X_scVI"]["params"]["model_path"].endswith("scvi")
    # the teacher aggregates it
    nk.tl.teacher_niches(mob, n_niches=4, use_rep="X_scVI", progress=False)
    assert t.obs["teacher_niche"].nunique() == 4
    assert t.uns["teacher_niche"]["params"]["use_rep"] == "X_scVI"


@pytest.mark.realdata
def test_scvi_latent_bad_input(mob, tmp_path):
    before = set(mob["table"].obsm)
    with pytest.raises(KeyError, match="batch_key"):
        nk.pp.scvi_latent(mob, batch_key="nope", max_epochs=1)
    with pytest.raises(FileNotFoundError, match="model_path"):
        nk.pp.scvi_latent(mob, model_path=tmp_path / "none", max_epochs=1)
    with pytest.raises(KeyError, match="layers"):
        nk.pp.scvi_latent(mob, layer="counts", max_epochs=1)
    t = mob["table"].copy()
    t.obsm.pop("X_scVI", None)
    t.X = t.X.copy()
    t.X.data[:5] = -1.0
    with pytest.raises(ValueError, match="negative"):
        nk.pp.scvi_latent(t, max_epochs=1)
    assert set(mob["table"].obsm) == before and "X_scVI" not in t.obsm


@pytest.mark.realdata
@pytest.mark.slow
def test_scvi_latent_with_a_split_never_sees_the_test_cells(mob):
    t = mob["table"].copy()
    nk.pp.spatial_split(t, buffer_um=150)
    test = (t.obs["split"] == "test").to_numpy()
    clean = nk.pp.scvi_latent(t, max_epochs=3, n_latent=4, progress=False, copy=True)
    assert clean.uns["X_scVI"]["params"]["fitted_on"] == "outside test"
    noisy = t.copy()
    x = noisy.X.toarray() if hasattr(noisy.X, "toarray") else np.asarray(noisy.X).copy()
    x[test] = np.random.default_rng(0).poisson(3.0, size=x[test].shape)
    noisy.X = x.astype(np.float32)
    moved = nk.pp.scvi_latent(noisy, max_epochs=3, n_latent=4, progress=False, copy=True)
    # training cells' latents do not depend on test expression; the test cells' do
    np.testing.assert_allclose(moved.obsm["X_scVI"][~test], clean.obsm["X_scVI"][~test], atol=1e-5)
    assert not np.allclose(moved.obsm["X_scVI"][test], clean.obsm["X_scVI"][test], atol=1e-3)
    # a held-out section is a batch no training cell has: refused with the way out named
    held = mob["table"].copy()
    nk.pp.spatial_split(held, method="libraries", test_libraries=["MOB3"])
    keys, uns = set(held.obsm), set(held.uns)
    with pytest.raises(ValueError, match="batch_key=None"):
        nk.pp.scvi_latent(held, max_epochs=1, progress=False)
    assert set(held.obsm) == keys and set(held.uns) == uns  # refused before anything is written
