"""Histology features on real H&E (ST mouse olfactory bulb): tissue layers look different."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dataset_path

import nichekd as nk
from nichekd._core.spatial import resolve

pytestmark = pytest.mark.realdata


def _layers(table, k: int = 5) -> np.ndarray:
    """Expression clusters (log-normalised counts, PCA, k-means): the bulb's concentric layers."""
    import scanpy as sc
    from sklearn.cluster import KMeans

    a = table.copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=10, random_state=0)
    return KMeans(k, n_init=10, random_state=0).fit_predict(a.obsm["X_pca"])


def test_stain_features_separate_expression_layers_on_st_mob():
    from scipy.spatial.distance import cdist

    root = dataset_path("st_mob")
    sdata = nk.datasets.st_mob(data_dir=root.parent, sections=("MOB1",))
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=100.0, standardize="library")
    table = sdata.tables["table"]
    x = table.obsm["X_stain"]
    assert x.shape == (table.n_obs, 27) and np.isfinite(x).all()
    p = table.uns["X_stain"]["params"]
    assert p["mpp_used"]["MOB1"] == pytest.approx(resolve(sdata).pyramid("MOB1").levels[0].mpp)
    labels = _layers(table)
    d = cdist(x, x)
    same = labels[:, None] == labels[None]
    off = ~np.eye(len(x), dtype=bool)
    within, between = d[same & off].mean(), d[~same].mean()
    # measured: within 4.8, between 7.0 (standardised features)
    assert within < 0.8 * between, (within, between)
