"""Spatial partitions and the dask versions of histology_features / predict_niches (equal to one process)."""

from __future__ import annotations

import numpy as np
import pytest

import nichekd as nk
from nichekd._core import dask as _dask
from nichekd._core.spatial import resolve
from nichekd.io._build import make_image
from nichekd.models import NicheStudent
from nichekd.pp._features_dask import histology_features_dask
from nichekd.tl._predict_dask import predict_niches_dask


@pytest.fixture(scope="module")
def small():
    sdata = nk.datasets.synthetic_tissue(400, random_state=3, progress=False)
    # small image chunks so that even this small section spans many tiles (and partitions)
    image = sdata.images["synthetic_he"]["scale0"]["image"]
    mpp = resolve(sdata).pyramid("synthetic").levels[0].mpp
    sdata.images["synthetic_he"] = make_image(np.asarray(image), mpp, "synthetic", chunks=64)
    nk.pp.histology_features(sdata, backbone="stain", key_added="he_features", device="cpu")
    return sdata


def test_spatial_partitions_cover_every_row_once_within_libraries():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (5000, 2))
    libs = np.where(rng.random(5000) < 0.3, "a", "b")
    parts = _dask.spatial_partitions(xy, libs, 600)
    rows = np.concatenate(parts)
    assert np.array_equal(np.sort(rows), np.arange(5000))
    assert all(len(set(libs[p])) == 1 for p in parts)
    assert max(len(p) for p in parts) < 3 * 600  # blocks are about the requested size
    assert len(parts) >= 5000 // 600
    with pytest.raises(ValueError, match="partition_size"):
        _dask.spatial_partitions(xy, libs, 0)


def test_tile_partitions_never_split_a_tile():
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 12, (4000, 2))
    parts = _dask.tile_partitions(tiles, 300)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(4000))
    owner = {}
    for i, p in enumerate(parts):
        for t in map(tuple, tiles[p]):
            assert owner.setdefault(t, i) == i


def test_halo_holds_every_neighbour_of_the_core():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 500, (3000, 2))
    libs = np.full(3000, "s")
    core = _dask.spatial_partitions(xy, libs, 400)[0]
    rows = _dask.with_halo(xy, libs, core, 30.0)
    assert np.array_equal(rows[: len(core)], core)
    d = np.linalg.norm(xy[core][:, None] - xy[None], axis=2)
    needed = np.flatnonzero((d <= 30.0).any(0))
    assert set(needed) <= set(rows)


def test_features_dask_equal_single_process(small):
    table = small.tables["table"]
    out = histology_features_dask(
        small, backbone="stain", key_added="he_features", device="cpu", partition_size=150, copy=True,
        progress=False,
    )  # fmt: skip
    params = out.uns["he_features"]["params"]
    assert params["partitions"] > 1 and params["scheduler"] == "sync"
    np.testing.assert_array_equal(out.obsm["he_features"], table.obsm["he_features"])


def test_features_dask_on_a_distributed_client(small):
    distributed = pytest.importorskip("distributed")
    table = small.tables["table"]
    with distributed.Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=":0"):
        out = histology_features_dask(
            small, backbone="stain", key_added="he_features", device="cpu", partition_size=100, copy=True,
            progress=False,
        )  # fmt: skip
    assert out.uns["he_features"]["params"]["scheduler"].startswith("distributed")
    np.testing.assert_array_equal(out.obsm["he_features"], table.obsm["he_features"])


def test_features_dask_bad_input_leaves_data_untouched(small):
    table = small.tables["table"]
    before = set(table.obsm), set(table.uns)
    with pytest.raises(ValueError, match="stain_reference"):
        histology_features_dask(small, backbone="stain", stain_normalization="macenko", key_added="x")
    with pytest.raises(ValueError, match="partition_size"):
        histology_features_dask(small, backbone="stain", key_added="x", partition_size=0)
    with pytest.raises(TypeError, match="shapes_key"):
        histology_features_dask(small, backbone="stain", key_added="x", shapes_key="synthetic_cells")
    assert (set(table.obsm), set(table.uns)) == before


@pytest.mark.parametrize("context_scales", [(), (1.0, 2.0)])  # context windows widen the halo
def test_predict_dask_equals_predict_niches(small, context_scales):
    table = small.tables["table"]
    feats = np.asarray(table.obsm["he_features"])
    xy = np.asarray(table.obsm["spatial"])
    teacher = np.random.default_rng(0).normal(size=(table.n_obs, 3)).astype(np.float32)
    teacher += 3 * (xy[:, :1] > np.median(xy[:, 0]))  # a learnable spatial signal
    model = NicheStudent(
        3, radius_um=40.0, architecture="mlp", features_key="he_features", context_scales=context_scales,
        encoder=dict(table.uns["he_features"]["params"]),  # the provenance prediction checks
    )  # fmt: skip
    model.fit(feats, teacher, xy, epochs=1, device="cpu", progress=False)
    single, parts = f"single{len(context_scales)}", f"parts{len(context_scales)}"  # one key per case
    nk.tl.predict_niches(small, model=model, key_added=single, device="cpu")
    predict_niches_dask(small, model, key_added=parts, partition_size=100, progress=False)
    assert table.uns[parts]["params"]["partitions"] > 1
    np.testing.assert_allclose(table.obsm[f"{parts}_proba"], table.obsm[f"{single}_proba"], atol=1e-5)
    assert (table.obs[parts].astype(str) == table.obs[single].astype(str)).all()
    with pytest.raises(ValueError, match="not fitted"):
        predict_niches_dask(small, NicheStudent(3, radius_um=40.0), key_added="never")
    assert "never" not in table.obs


def test_features_dask_default_key_of_a_custom_module(small):
    """One default-key rule: a custom module's features land under the same key on both paths (the dask path
    used to build it from the module's repr)."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    module = Tiny()
    kw = {"backbone": module, "input_size": 16, "mpp": 4.0, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    one = nk.pp.histology_features(small, device="cpu", copy=True, **kw)
    many = histology_features_dask(small, device="cpu", partition_size=150, copy=True, progress=False, **kw)
    key = [k for k in one.obsm if k.startswith("X_custom")]
    assert key and key == [k for k in many.obsm if k.startswith("X_custom")]
    assert "object at 0x" not in key[0]
    np.testing.assert_allclose(many.obsm[key[0]], one.obsm[key[0]], rtol=1e-5, atol=1e-6)
