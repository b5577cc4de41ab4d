"""read_visium_hd and read_xenium on small fixtures in the real on-disk formats; concatenate; zarr round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures_io import darkness, image_at, make_visium_hd, make_xenium

import nichekd as nk
from nichekd._layout import library_infos


@pytest.fixture
def hd(tmp_path):
    return make_visium_hd(tmp_path / "run1")


@pytest.fixture
def xen(tmp_path):
    return make_xenium(tmp_path)


def test_read_visium_hd(hd):
    sdata = nk.io.read_visium_hd(hd["outs"], bin_size=8)
    table = sdata.tables["table"]
    assert table.n_obs == hd["n_in_tissue"] and table.n_vars == 12
    info = library_infos(table)["run1"]
    assert info.mpp == pytest.approx(hd["mpp_full"] / 0.25) and info.diameter_um == 8.0
    assert info.technology == "visium_hd"
    # 8 um bins on a 8 um grid
    xy = table.obsm["spatial"]
    assert np.min(np.diff(np.unique(xy[:, 0]))) == pytest.approx(8.0)
    raw = nk.io.read_visium_hd(hd["outs"], counts="raw", in_tissue_only=False, library_id="r")
    rt = raw.tables["table"]
    assert rt.n_obs == hd["n_bins"]
    dark = darkness(image_at(raw, "r", rt.obsm["spatial"]))
    inside = rt.obs["in_tissue"].to_numpy() == 1
    assert dark[inside].mean() > dark[~inside].mean() + 50


def test_read_visium_hd_bad_inputs(hd):
    with pytest.raises(FileNotFoundError, match="square_008um"):
        nk.io.read_visium_hd(hd["outs"], bin_size=2)
    folder = hd["outs"] / "binned_outputs" / "square_008um"
    pos = pd.read_parquet(folder / "spatial" / "tissue_positions.parquet")
    pos["pxl_col_in_fullres"] *= 5
    pos.to_parquet(folder / "spatial" / "tissue_positions.parquet")
    with pytest.raises(ValueError, match="outside the image"):
        nk.io.read_visium_hd(hd["outs"])
    (folder / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(FileNotFoundError, match="filtered count matrix"):
        nk.io.read_visium_hd(hd["outs"])


def test_read_xenium_aligned_he(xen):
    sdata = nk.io.read_xenium(xen["outs"], he_image=xen["he_image"], alignment=xen["alignment"])
    table = sdata.tables["table"]
    assert table.shape == (150, xen["n_genes"])  # control probes dropped
    info = library_infos(table)["fixture_region"]
    assert info.mpp == pytest.approx(xen["mpp_he"]) and info.kind == "cell"
    assert info.diameter_um == pytest.approx(12.0)
    # cells land where they were drawn on the H&E, through the rotated alignment
    np.testing.assert_allclose(table.obsm["spatial"] / info.mpp, xen["he_px"], atol=1e-6)
    np.testing.assert_allclose(table.obsm["spatial_xenium"], xen["xy_um_xenium"])
    dark = darkness(image_at(sdata, "fixture_region", table.obsm["spatial"]))
    assert dark[xen["on_tissue"]].mean() > dark[~xen["on_tissue"]].mean() + 50
    no_image = nk.io.read_xenium(xen["outs"], library_id="cells_only")
    assert not no_image.images and library_infos(no_image.tables["table"])["cells_only"].mpp is None


def test_read_xenium_bad_inputs(xen, tmp_path):
    with pytest.raises(ValueError, match="3x3"):
        bad = tmp_path / "bad.csv"
        pd.DataFrame(np.eye(2)).to_csv(bad, header=False, index=False)
        nk.io.read_xenium(xen["outs"], he_image=xen["he_image"], alignment=bad)
    # the H&E without its alignment: cells fall off the image
    with pytest.raises(ValueError, match="outside the image"):
        nk.io.read_xenium(xen["outs"], he_image=xen["he_image"])
    cells = pd.read_parquet(xen["outs"] / "cells.parquet")
    cells["cell_id"] = "other" + cells["cell_id"]
    cells.to_parquet(xen["outs"] / "cells.parquet")
    with pytest.raises(ValueError, match="no position"):
        nk.io.read_xenium(xen["outs"])
    (xen["outs"] / "experiment.xenium").unlink()
    with pytest.raises(FileNotFoundError, match="experiment.xenium"):
        nk.io.read_xenium(xen["outs"])


def test_concatenate(tmp_path):
    a = nk.io.read_visium_hd(make_visium_hd(tmp_path / "a", seed=1)["outs"], library_id="A")
    b = nk.io.read_visium_hd(make_visium_hd(tmp_path / "b", grid=20, seed=2)["outs"], library_id="B")
    n_a, n_b = a.tables["table"].n_obs, b.tables["table"].n_obs
    both = nk.io.concatenate([a, b])
    table = both.tables["table"]
    assert table.n_obs == n_a + n_b and table.n_vars == 12
    assert table.obs_names.is_unique  # the same bin barcodes in both sections
    assert list(table.obs["library"].cat.categories) == ["A", "B"]
    assert sorted(library_infos(table)) == ["A", "B"]
    assert set(both.images) == {"A_he", "B_he"} and set(both.shapes) == {"A_spots", "B_spots"}
    assert sorted(table.uns["spatialdata_attrs"]["region"]) == ["A_spots", "B_spots"]
    np.testing.assert_allclose(
        table[table.obs["library"] == "B"].obsm["spatial"], b.tables["table"].obsm["spatial"]
    )
    assert a.tables["table"].n_obs == n_a and list(library_infos(a.tables["table"])) == [
        "A"
    ]  # inputs untouched
    with pytest.raises(ValueError, match="Library id 'A'"):
        nk.io.concatenate([a, a])
    # genes: inner join by default, outer on request
    b.tables["table"].var_names = [f"B{g}" if i < 2 else g for i, g in enumerate(b.tables["table"].var_names)]
    assert nk.io.concatenate([a, b]).tables["table"].n_vars == 10
    assert nk.io.concatenate([a, b], join="outer").tables["table"].n_vars == 14


def test_zarr_round_trip(tmp_path, xen):
    from spatialdata import read_zarr
    from spatialdata.transformations import get_transformation

    sdata = nk.io.read_xenium(xen["outs"], he_image=xen["he_image"], alignment=xen["alignment"])
    sdata.write(tmp_path / "x.zarr")
    back = read_zarr(tmp_path / "x.zarr")
    t0, t1 = sdata.tables["table"], back.tables["table"]
    assert set(back.images) == set(sdata.images) and set(back.shapes) == set(sdata.shapes)
    np.testing.assert_array_equal(t0.X.toarray(), t1.X.toarray())
    np.testing.assert_allclose(t0.obsm["spatial"], t1.obsm["spatial"])
    assert library_infos(t0) == library_infos(t1)
    pd.testing.assert_frame_equal(t0.obs, t1.obs)
    for name in sdata.images:
        m0 = get_transformation(sdata.images[name], "fixture_region").to_affine_matrix(("x", "y"), ("x", "y"))
        m1 = get_transformation(back.images[name], "fixture_region").to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(m0, m1)
        np.testing.assert_array_equal(np.asarray(sdata.images[name]), np.asarray(back.images[name]))
    np.testing.assert_allclose(
        darkness(image_at(back, "fixture_region", t1.obsm["spatial"])),
        darkness(image_at(sdata, "fixture_region", t0.obsm["spatial"])),
    )
