"""Visium HD at full size: bins summed to 16 um (pp.aggregate_bins) and grid features with per-bin read-out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import dataset_path

import nichekd as nk
from nichekd._core.spatial import micron_coords, resolve
from nichekd.pp._grid import GridReadout, grid_nodes, read_out


@pytest.fixture
def hd_kidney():
    return nk.datasets.visium_hd_kidney_crop(dataset_path("visium_hd_kidney_crop").parent)


def _check_aggregate(sdata, table_key: str, new_table: str, element: str) -> None:
    src, out = sdata.tables[table_key], sdata.tables[new_table]
    assert element in sdata.shapes
    # counts conserved, sparse, each new bin holds at most 2 x 2 source bins
    assert out.X.sum() == pytest.approx(src.X.sum(), rel=1e-6)
    assert hasattr(out.X, "tocsr")
    assert out.obs["n_bins"].sum() == src.n_obs and out.obs["n_bins"].max() == 4
    # one new bin = the summed rows of its block
    row, col = int(out.obs["array_row"].iloc[0]), int(out.obs["array_col"].iloc[0])
    block = (src.obs["array_row"].to_numpy() // 2 == row) & (src.obs["array_col"].to_numpy() // 2 == col)
    np.testing.assert_allclose(np.asarray(src.X[block].sum(0)).ravel(), out.X[0].toarray().ravel())
    # nichekd reads the new bins as 16 um squares, in microns, at the centre of their full blocks
    ctx = resolve(sdata, table_key=new_table, images=False)
    assert [lib.diameter_um for lib in ctx.libraries.values()] == [pytest.approx(16.0)]
    src_xy = micron_coords(sdata, table_key=table_key)
    full = np.flatnonzero(out.obs["n_bins"].to_numpy() == 4)[:50]
    for i in full:
        r, c = out.obs["array_row"].iloc[i], out.obs["array_col"].iloc[i]
        sel = (src.obs["array_row"].to_numpy() // 2 == r) & (src.obs["array_col"].to_numpy() // 2 == c)
        np.testing.assert_allclose(ctx.xy_um[i], src_xy[sel].mean(0), atol=1e-3)
    geom = sdata.shapes[element].geometry
    assert (geom.geom_type == "Polygon").all()
    assert out.uns["aggregate_bins"]["params"]["bin_size_um"] == 16.0


def test_aggregate_bins_kidney_crop(hd_kidney):
    sdata = hd_kidney
    nk.pp.aggregate_bins(sdata, bin_size_um=16)
    _check_aggregate(sdata, "table", "square_016um", "kidney_square_016um")
    out = sdata.tables["square_016um"]
    assert out.obs["library"].eq("kidney").all()
    # the new table works downstream like any other (units, neighbours, teacher)
    nk.tl.teacher_niches(sdata, n_niches=3, table_key="square_016um", method="aggregate", progress=False)
    assert out.obs["teacher_niche"].nunique() == 3
    # a re-run would replace its table, which now holds the teacher's results (issue 21: refused, named)
    with pytest.raises(ValueError, match="already holds teacher niches of nk.tl.teacher_niches"):
        nk.pp.aggregate_bins(sdata, bin_size_um=16)
    with pytest.raises(ValueError, match="whole multiple"):
        nk.pp.aggregate_bins(sdata, bin_size_um=12, key_added="x")
    nk.pp.aggregate_bins(sdata, bin_size_um=32, key_added="b32")
    assert sdata.tables["b32"].obs["n_bins"].max() == 16


def _spatialdata_io_hd(grid: int = 24, mpp: float = 0.5):
    """8 um bins built as spatialdata-io's ``visium_hd`` builds them: squares in full-resolution pixels named
    ``{dataset}_square_008um``, a table ``square_008um`` (instance key ``location_id``), a second coordinate
    system scaled to the hires image."""
    import anndata as ad
    import geopandas as gpd
    from scipy import sparse
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    rows, cols = (a.ravel() for a in np.mgrid[0:grid, 0:grid])
    bin_px = 8.0 / mpp
    # a slightly rotated array, as on a real slide
    theta = np.deg2rad(0.3)
    xy = (
        np.c_[cols * np.cos(theta) - rows * np.sin(theta), cols * np.sin(theta) + rows * np.cos(theta)]
        * bin_px
    )
    xy += 50.0
    transformations = {"hd": Identity(), "hd_downscaled_hires": Scale([0.25, 0.25], axes=("x", "y"))}
    squares = gpd.GeoSeries(gpd.points_from_xy(xy[:, 0], xy[:, 1])).buffer(bin_px / 2, cap_style=3)
    shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=squares), transformations=transformations)
    x = sparse.csr_matrix(np.random.default_rng(0).poisson(2.0, (len(rows), 7)).astype(np.float32))
    table = ad.AnnData(X=x)
    table.obs_names = [f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
    table.obs["array_row"], table.obs["array_col"] = rows, cols
    table.obs["location_id"] = np.arange(len(rows))
    table.obs["region"] = pd.Categorical(["hd_square_008um"] * len(rows))
    table.obsm["spatial"] = xy
    table = TableModel.parse(table, region="hd_square_008um", region_key="region", instance_key="location_id")
    return SpatialData(shapes={"hd_square_008um": shapes}, tables={"square_008um": table})


def test_aggregate_bins_spatialdata_io_object():
    from spatialdata.transformations import get_transformation

    mpp = 0.5
    sdata = _spatialdata_io_hd(mpp=mpp)
    nk.pp.aggregate_bins(sdata, bin_size_um=16, table_key="square_008um")
    _check_aggregate(sdata, "square_008um", "square_016um", "hd_square_016um")
    # same coordinate systems and units (full-resolution pixels) as spatialdata-io's own element
    assert set(get_transformation(sdata.shapes["hd_square_016um"], get_all=True)) == {
        "hd",
        "hd_downscaled_hires",
    }
    side = np.sqrt(sdata.shapes["hd_square_016um"].geometry.area.to_numpy())
    np.testing.assert_allclose(side, 16.0 / mpp)
    assert sdata.tables["square_016um"].uns["spatialdata_attrs"]["instance_key"] == "location_id"


def test_grid_read_out_is_bilinear():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (300, 2))
    nodes, corners, w = grid_nodes(xy, 32.0)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    assert len(nodes) < len(xy) and corners.max() < len(nodes)
    # bilinear interpolation reproduces a function linear in x and y exactly
    coef = np.array([[0.5, -1.0], [2.0, 0.25]])
    node_f = (nodes @ coef + [1.0, -3.0]).astype(np.float32)
    got = read_out(node_f, GridReadout(np.arange(len(xy)), corners, w), len(xy))
    np.testing.assert_allclose(got, xy @ coef + [1.0, -3.0], rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="grid_um"):
        grid_nodes(xy, 0.0)


def test_histology_features_on_a_grid():
    sdata = nk.datasets.synthetic_tissue(n_cells=400, random_state=0, progress=False)
    table = sdata.tables["table"]
    nk.pp.histology_features(sdata, backbone="stain", key_added="bins", device="cpu")
    nk.pp.histology_features(sdata, backbone="stain", key_added="grid", device="cpu", grid_um=24.0)
    params = table.uns["grid"]["params"]
    assert params["grid_um"] == 24.0 and params["grid_nodes"] < table.n_obs
    a, b = np.asarray(table.obsm["bins"], float), np.asarray(table.obsm["grid"], float)
    keep = a.std(0) > 1e-6
    r = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in np.flatnonzero(keep)]
    assert np.median(r) > 0.8
    # cached features with other grid settings are not silently reused
    with pytest.raises(ValueError, match="grid_um"):
        nk.pp.histology_features(sdata, backbone="stain", key_added="grid", device="cpu", grid_um=48.0)
    with pytest.raises(ValueError, match="grid_um"):
        nk.pp.histology_features(sdata, backbone="stain", key_added="g2", device="cpu", grid_um=-1.0)


def _dense_bins(side_um: float = 400.0, bin_um: float = 8.0, mpp: float = 2.0):
    """8 um bins over a ``side_um`` square of a random H&E at ``mpp`` (the kidney crop's 2 um/px)."""
    import anndata as ad

    from nichekd.io._build import build_library

    centres = np.arange(bin_um / 2 + 60, side_um - 60, bin_um)
    xy = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)
    side_px = int(side_um / mpp)
    img = np.random.default_rng(0).integers(90, 250, (side_px, side_px, 3), dtype=np.uint8)
    table = ad.AnnData(np.zeros((len(xy), 1), np.float32))
    return build_library(table, library="hd", xy_um=xy, diameter_um=bin_um, image=img, mpp=mpp)


@pytest.fixture
def few_observations_suffice(monkeypatch):
    """``grid_um="auto"`` takes the grid from 1,000 observations (a full section's size is out of a test's reach)."""
    from nichekd.pp import _grid

    monkeypatch.setattr(_grid, "AUTO_GRID_MIN_OBSERVATIONS", 1000)


def test_auto_grid_needs_a_large_section():
    """Below AUTO_GRID_MIN_OBSERVATIONS dense bins keep one patch each: affordable, and on the kidney crop a grid
    lowered the student's ARI (AUTO_GRID_MIN_OBSERVATIONS' comment)."""
    sdata = _dense_bins()
    table = sdata.tables["table"]
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=112.0, key_added="auto")
    params = table.uns["auto"]["params"]
    assert params.get("grid_um") is None and params.get("grid_nodes") is None
    assert params["grid_choice"].startswith(
        "auto: one patch per observation (fewer than 100,000 observations"
    )


def test_auto_grid_for_dense_bins_is_recorded_and_replayed(few_observations_suffice):
    from nichekd.tl._predict import _replay

    sdata = _dense_bins()
    table = sdata.tables["table"]
    nk.pp.histology_features(
        sdata, backbone="stain", patch_size_um=112.0, key_added="auto"
    )  # default grid_um="auto"
    params = table.uns["auto"]["params"]
    assert params.get("grid_um") == 28.0  # a quarter of the 112 um patch
    assert params["grid_choice"].startswith("auto: grid chosen") and params["grid_nodes"] * 8 <= table.n_obs
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=112.0, key_added="given", grid_um=28.0)
    np.testing.assert_array_equal(table.obsm["auto"], table.obsm["given"])
    # the per-observation path is one argument away, and differs
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=112.0, key_added="bins", grid_um=None)
    per_bin = table.uns["bins"]["params"]
    assert per_bin.get("grid_um") is None and per_bin.get("grid_nodes") is None
    assert per_bin["grid_choice"] == "given: one patch per observation"
    assert not np.array_equal(table.obsm["auto"], table.obsm["bins"])
    # a model replays the recorded spacing on new slides, whatever their density
    assert _replay(params, "X", "table")["grid_um"] == 28.0
    # a re-run with the default reuses the features; features made per bin are kept under "auto" too
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=112.0, key_added="bins")
    assert table.uns["bins"]["params"].get("grid_um") is None


def test_auto_grid_keeps_one_patch_per_sparse_observation():
    sdata = nk.datasets.synthetic_tissue(n_cells=400, random_state=0, progress=False)
    table = sdata.tables["table"]
    nk.pp.histology_features(sdata, backbone="stain")
    params = table.uns["X_stain"]["params"]
    assert params.get("grid_um") is None and params.get("grid_nodes") is None
    assert params["grid_choice"].startswith("auto: one patch per observation")


def test_dask_features_decide_the_auto_grid_once_for_the_section(few_observations_suffice):
    sdata = _dense_bins(side_um=1100.0, mpp=0.5)  # 2200 px: more than one image tile, so several partitions
    table = sdata.tables["table"]
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=112.0, key_added="one")
    nk.pp.histology_features_dask(
        sdata, backbone="stain", patch_size_um=112.0, key_added="parts", partition_size=2000, progress=False
    )
    params = table.uns["parts"]["params"]
    assert params.get("grid_um") == 28.0 and params["grid_choice"].startswith("auto: grid chosen")
    assert params["partitions"] > 1
    np.testing.assert_allclose(table.obsm["parts"], table.obsm["one"], rtol=1e-5, atol=1e-6)
