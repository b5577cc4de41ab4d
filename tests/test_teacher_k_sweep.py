"""K sweep: one row per K, stability across seeds, BIC; fallback cell types."""

from __future__ import annotations

import numpy as np
import pytest
from test_teacher import multi_library_tissue

import nichekd as nk
from nichekd.tl._k_sweep import K_SWEEP_COLUMNS


def test_k_sweep_columns_and_stability():
    a = multi_library_tissue(n_per_lib=500, n_niches=4)
    before = set(a.obs.columns)
    df = nk.tl.niche_k_sweep(a, k_values=[2, 4, 7], n_seeds=3, progress=False)
    assert list(df.columns) == list(K_SWEEP_COLUMNS) and list(df["k"]) == [2, 4, 7]
    assert (df["n_seeds"] == 3).all() and np.isfinite(df["bic"]).all()
    assert df["stability_ari_mean"].between(-1, 1).all() and (df["stability_ari_sd"] >= 0).all()
    assert (df["min_niche_fraction"] <= 1 / df["k"]).all()
    assert set(a.obs.columns) == before  # the sweep writes nothing
    again = nk.tl.niche_k_sweep(a, k_values=[2, 4, 7], n_seeds=3, progress=False)
    np.testing.assert_allclose(again.to_numpy(), df.to_numpy())


def test_k_sweep_transformer_has_no_bic_and_bad_k():
    a = multi_library_tissue(n_per_lib=300)
    df = nk.tl.niche_k_sweep(
        a, k_values=[3], n_seeds=2, method="transformer", transformer_kwargs={"n_steps": 10}, progress=False
    )
    assert np.isnan(df["bic"]).all() and np.isfinite(df["stability_ari_mean"]).all()
    with pytest.raises(ValueError, match="k_values must be integers >= 2"):
        nk.tl.niche_k_sweep(a, k_values=[1, 3], progress=False)
    with pytest.raises(ValueError, match="larger than the number of cells|allows"):
        nk.tl.niche_k_sweep(a, k_values=[3, 1000], progress=False)


def test_cell_types_fallback_finds_types():
    from sklearn.metrics import adjusted_rand_score

    a = multi_library_tissue(n_per_lib=400, n_types=4)
    x_before = a.X.copy()
    # obs['cell_type'] holds the true types (the user's): the clusters go to another key (issue 21)
    out = nk.pp.cell_types(a, resolution=0.3, copy=True, key_added="leiden_copy")
    assert "leiden_copy" not in a.obs and (a.X != x_before).nnz == 0
    nk.pp.cell_types(a, resolution=0.3, key_added="cell_type_leiden")
    assert (a.obs["cell_type_leiden"] == out.obs["leiden_copy"]).all()  # same seed, same clusters
    assert adjusted_rand_score(a.obs["cell_type"], a.obs["cell_type_leiden"]) > 0.5
    assert a.obs["cell_type_leiden"].cat.categories[0] == "C0"
    assert a.uns["cell_type_leiden"]["params"]["resolution"] == 0.3
