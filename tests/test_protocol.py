"""The paper's protocol by construction: one answer per model, guards that hold whatever the call order."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import nichekd as nk
from nichekd.io._build import build_library
from nichekd.pp import spatial_split

K = 3


@pytest.fixture(scope="module")
def featured():
    """A synthetic section with stain features (no split, no teacher yet)."""
    torch.set_num_threads(1)
    sdata = nk.datasets.synthetic_tissue(1200, n_niches=K, random_state=2, progress=False)
    nk.pp.histology_features(sdata, backbone="stain", device="cpu")
    torch.set_num_threads(1)
    return sdata


def _copy(sdata):
    import spatialdata as sd

    return sd.SpatialData(
        images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": sdata["table"].copy()}
    )


def test_predict_niches_on_the_training_object_gives_distills_labels(featured):
    sdata = _copy(featured)
    nk.pp.spatial_split(sdata)
    nk.tl.teacher_niches(sdata, n_niches=K, progress=False)
    model = nk.tl.distill(sdata, epochs=2, progress=False, device="cpu")
    assert model.split_key == "split"
    nk.tl.predict_niches(sdata, model, key_added="again", device="cpu")
    t = sdata["table"]
    np.testing.assert_array_equal(t.obs["student_niche"].astype(str), t.obs["again"].astype(str))
    np.testing.assert_allclose(t.obsm["student_niche_proba"], t.obsm["again_proba"], atol=1e-6)
    assert t.uns["again"]["runs"]["run0"]["params"]["split_key"] == "split"


def test_the_teacher_uses_the_split_when_there_is_one(featured):
    sdata = _copy(featured)
    nk.tl.teacher_niches(sdata, n_niches=K, progress=False)
    assert sdata["table"].uns["teacher_niche"]["params"]["fitted_on"] == "all"
    nk.pp.spatial_split(sdata)
    # a teacher fitted before the split saw test expression: distill says so
    with pytest.warns(UserWarning, match="fitted on every cell"):
        nk.tl.distill(sdata, epochs=1, progress=False, device="cpu")
    nk.tl.teacher_niches(sdata, n_niches=K, progress=False)
    params = sdata["table"].uns["teacher_niche"]["params"]
    assert params["fitted_on"] == "outside test" and params["split_key"] == "split"
    # its exported graph is the one it used: no edge across the split
    t = sdata["table"]
    rows, cols = t.obsp["spatial_connectivities"].nonzero()
    split = t.obs["split"].astype(str).to_numpy()
    assert len(rows) and (split[rows] == split[cols]).all()


def test_a_split_redone_after_the_teacher_is_refused(featured):
    sdata = _copy(featured)
    nk.pp.spatial_split(sdata)
    nk.tl.teacher_niches(sdata, n_niches=K, progress=False)
    nk.pp.spatial_split(sdata, test_strip=2)
    before = sdata["table"].copy()
    with pytest.raises(ValueError, match="another split"):
        nk.tl.distill(sdata, epochs=1, progress=False, device="cpu")
    assert "student_niche" not in sdata["table"].obs and set(sdata["table"].obsm) == set(before.obsm)


def test_views_made_after_the_split_that_read_past_its_buffer_are_refused(featured):
    sdata = _copy(featured)
    nk.pp.spatial_split(sdata)
    nk.tl.teacher_niches(sdata, n_niches=K, progress=False)
    nk.pp.augmented_features(sdata, features_key="X_stain", n_views=2, scale_range=0.4, device="cpu")
    torch.set_num_threads(1)
    with pytest.raises(ValueError, match="train and test patches share pixels"):
        nk.tl.distill(sdata, epochs=1, progress=False, device="cpu")
    # redoing the split as the message says covers the views
    nk.pp.spatial_split(sdata)
    nk.tl.teacher_niches(sdata, n_niches=K, progress=False)
    nk.tl.distill(sdata, epochs=1, progress=False, device="cpu")
    buffer = sdata["table"].uns["split"]["params"]["buffer_um"]
    scale = max(sdata["table"].uns["X_stain_aug"]["params"]["scales"])
    assert scale > 1.1 and buffer >= scale * sdata["table"].uns["X_stain"]["params"]["patch_size_um"] / 2


def _table(n=2000) -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
    a.obs_names = [f"c{i}" for i in range(n)]
    t = build_library(a, library="A", xy_um=rng.uniform(0, 1000, (n, 2)), diameter_um=10, kind="cell")
    table = t.tables["table"]
    table.obs["library"] = pd.Categorical(table.obs["library"].astype(str))
    return table


def test_the_split_guard_covers_every_ring_of_the_teacher():
    t = _table()
    t.uns["teacher_niche"] = {"params": {"radius_um": 40.0, "n_rings": 4, "method": "aggregate"}}
    spatial_split(t, buffer_um=30)
    params = t.uns["split"]["params"]
    assert params["buffer_um"] == 80.0 and params["teacher_guard_applied"] == "widen"
    y = t.obsm["spatial"][:, 1]
    lab = t.obs["split"].astype(str).to_numpy()
    assert np.abs(y[lab == "train"][:, None] - y[lab == "test"][None]).min() >= 160.0
    t.uns["teacher_niche"]["params"]["n_rings"] = 1  # one ring fits in the 60 um gap: no widening
    spatial_split(t, buffer_um=30)
    assert t.uns["split"]["params"]["buffer_um"] == 30.0


def test_public_functions_leave_torch_threads_as_set(featured):
    sdata = _copy(featured)
    nk.pp.spatial_split(sdata)
    torch.set_num_threads(1)
    nk.tl.teacher_niches(sdata, n_niches=K, progress=False)
    nk.tl.histology_baseline(sdata, method="leiden", n_niches=K)
    assert torch.get_num_threads() == 1


def test_library_statistics_come_from_the_training_cells(featured):
    sdata = _copy(featured)
    t = sdata["table"]
    nk.pp.histology_features(sdata, backbone="stain", device="cpu", standardize="library", key_added="z")
    assert t.uns["z"]["params"]["statistics_from"] == "all"
    with pytest.warns(UserWarning, match="statistics of every cell"):
        nk.pp.spatial_split(sdata, features_key="z")
    nk.pp.histology_features(
        sdata, backbone="stain", device="cpu", standardize="library", key_added="z", overwrite=True
    )
    torch.set_num_threads(1)
    assert t.uns["z"]["params"]["statistics_from"] == "train"
    train = (t.obs["split"] == "train").to_numpy()
    z = np.asarray(t.obsm["z"], dtype=np.float64)
    np.testing.assert_allclose(z[train].mean(0), 0.0, atol=1e-4)
    # tripling the raw test features would not move a training feature: the statistics ignore test rows
    raw = np.asarray(t.obsm["X_stain"], dtype=np.float64)
    from nichekd.pp._features import _standardize

    libs = t.obs["library"].astype(str).to_numpy()
    moved = raw.copy()
    moved[~train] *= 3
    np.testing.assert_array_equal(
        _standardize(raw, libs, train)[train], _standardize(moved, libs, train)[train]
    )


def test_the_exported_graph_is_the_teachers_capped_lists(featured):
    """obsp['spatial_connectivities'] holds exactly the teacher's neighbour lists: its radius, its cap (it used
    to be squidpy's uncapped radius graph), within each split side, the cell itself excluded."""
    from nichekd._core.neighbors import radius_neighbours
    from nichekd._core.spatial import micron_coords
    from nichekd.pp._split import split_groups

    sdata = _copy(featured)
    nk.pp.spatial_split(sdata)
    nk.tl.teacher_niches(sdata, n_niches=K, model={"max_neighbors": 4}, progress=False)
    t = sdata["table"]
    params = t.uns["teacher_niche"]["params"]
    groups = split_groups(np.asarray(t.obs["library"]).astype(str), t.obs["split"].astype(str).to_numpy())
    nbrs = radius_neighbours(micron_coords(sdata), params["radius_um"], groups=groups, max_neighbors=4)
    conn = t.obsp["spatial_connectivities"].tocsr()
    assert conn.diagonal().sum() == 0 and (np.diff(conn.indptr) <= 4).all()
    for i in range(0, t.n_obs, 97):
        expected = set(nbrs.index[i, 1:][nbrs.index[i, 1:] >= 0])
        assert set(conn.indices[conn.indptr[i] : conn.indptr[i + 1]]) == expected
    assert t.uns["spatial_neighbors"]["params"]["max_neighbors"] == 4
