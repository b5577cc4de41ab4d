"""Visium HD and Xenium on small fixtures in the real on-disk formats: spatialdata-io's readers and nichekd's
adapters over them, micron coordinates through ``_elements.resolve``, spatialdata.concatenate, zarr round trips."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from fixtures_io import darkness, image_at, make_visium_hd, make_xenium
from scipy.spatial import cKDTree

import nichekd as nk
from nichekd._core.spatial import resolve

HD_TABLE = "square_008um"
# spatialdata-io warns that the fixtures have no full-resolution microscope image (they have hires/lowres)
pytestmark = [
    pytest.mark.filterwarnings("ignore:No full resolution image found:UserWarning"),
    pytest.mark.filterwarnings("ignore:Observation names are not unique:UserWarning"),  # inside concatenate
]


@pytest.fixture
def hd(tmp_path):
    return make_visium_hd(tmp_path / "run1")


@pytest.fixture
def xen(tmp_path):
    return make_xenium(tmp_path)


def _same_library(a, b) -> None:
    fields = ("image", "region", "coordinate_system", "diameter_um", "technology")
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    assert a.microns_per_unit == pytest.approx(b.microns_per_unit)


def test_spatialdata_io_visium_hd_fixture_in_microns(hd):
    """spatialdata-io itself reads the fixture; resolve turns its full-res pixels into the 8 um bin grid."""
    import spatialdata_io

    sdata = spatialdata_io.visium_hd(hd["outs"], dataset_id="run1", load_segmentations_only=False)
    assert set(sdata.tables) == {HD_TABLE} and set(sdata.shapes) == {"run1_square_008um"}
    table = sdata.tables[HD_TABLE]
    assert table.n_obs == hd["n_in_tissue"] and 100 < table.n_obs < 1000
    ctx = resolve(sdata, table_key=HD_TABLE)
    lib = ctx.library("run1_square_008um")
    assert lib.technology == "visium_hd" and lib.diameter_um == pytest.approx(8.0)
    assert lib.microns_per_unit == pytest.approx(hd["mpp_full"], rel=0.01)
    grid = table.obs[["array_col", "array_row"]].to_numpy(float) * 8.0
    np.testing.assert_allclose(ctx.xy_um - ctx.xy_um.min(0), grid - grid.min(0), atol=0.08)  # 1% of a bin
    d, _ = cKDTree(ctx.xy_um).query(ctx.xy_um, k=2)
    np.testing.assert_allclose(d[:, 1], 8.0, rtol=0.01)
    assert lib.image == "run1_hires_image"
    assert ctx.pyramid("run1_square_008um").levels[0].mpp == pytest.approx(
        hd["mpp_full"] / hd["hires_scalef"]
    )


def test_read_visium_hd(hd):
    sdata = nk.io.read_visium_hd(hd["outs"])
    table = sdata.tables[HD_TABLE]
    assert table.n_obs == hd["n_in_tissue"] and table.n_vars == 12
    ctx = resolve(sdata, table_key=HD_TABLE)
    lib = ctx.library("run1_square_008um")  # the run name names the elements
    assert lib.microns_per_unit == pytest.approx(hd["mpp_full"]) and lib.diameter_um == pytest.approx(8.0)
    assert lib.technology == "visium_hd" and lib.image == "run1_hires_image"
    assert table.uns["spatial"]["run1_square_008um"]["scalefactors"]["bin_size_um"] == 8.0
    assert np.min(np.diff(np.unique(ctx.xy_um[:, 0]))) == pytest.approx(8.0)
    raw = nk.io.read_visium_hd(hd["outs"], counts="raw", in_tissue_only=False, library_id="r")
    rt = raw.tables[HD_TABLE]
    assert rt.n_obs == hd["n_bins"]
    rctx = resolve(raw, table_key=HD_TABLE)
    dark = darkness(image_at(raw, "r_square_008um", rctx.xy_um, table_key=HD_TABLE))
    inside = rt.obs["in_tissue"].to_numpy() == 1
    assert dark[inside].mean() > dark[~inside].mean() + 50
    kept = nk.io.read_visium_hd(hd["outs"], counts="raw", library_id="r")
    assert kept.tables[HD_TABLE].n_obs == int(inside.sum()) == len(kept.shapes["r_square_008um"])
    np.testing.assert_allclose(resolve(kept, table_key=HD_TABLE).xy_um, rctx.xy_um[inside])


def test_read_visium_hd_bad_inputs(hd):
    with pytest.raises(FileNotFoundError, match="square_002um.*present: \\['square_008um'\\]"):
        nk.io.read_visium_hd(hd["outs"], bin_size=2)
    folder = hd["outs"] / "binned_outputs" / "square_008um"
    pos = pd.read_parquet(folder / "spatial" / "tissue_positions.parquet")
    pos["pxl_col_in_fullres"] *= 5
    pos.to_parquet(folder / "spatial" / "tissue_positions.parquet")
    with pytest.raises(ValueError, match="outside the image"):
        nk.io.read_visium_hd(hd["outs"])
    pos["barcode"] = "x" + pos["barcode"]
    pos.to_parquet(folder / "spatial" / "tissue_positions.parquet")
    with pytest.raises(ValueError, match="no position"):
        nk.io.read_visium_hd(hd["outs"])
    (folder / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(FileNotFoundError, match="filtered count matrix.*counts='raw'"):
        nk.io.read_visium_hd(hd["outs"])
    (hd["outs"] / "feature_slice.h5").unlink()
    with pytest.raises(FileNotFoundError, match="feature slice file"):
        nk.io.read_visium_hd(hd["outs"])


def test_spatialdata_io_xenium_fixture_in_microns(xen):
    """spatialdata-io itself reads the fixture's cells; resolve gives Xenium's micron positions."""
    import spatialdata_io

    from nichekd.io._xenium import XENIUM_DEFAULTS

    sdata = spatialdata_io.xenium(xen["outs"], **XENIUM_DEFAULTS)
    ctx = resolve(sdata)
    lib = ctx.library("cell_circles")  # one library per annotated element
    assert (lib.coordinate_system, lib.technology) == ("global", "xenium")
    assert lib.microns_per_unit == pytest.approx(0.2125) and lib.image is None
    np.testing.assert_allclose(ctx.xy_um, xen["xy_um_xenium"], atol=1e-6)


def test_read_xenium_aligned_he(xen):
    sdata = nk.io.read_xenium(xen["outs"], he_image=xen["he_image"], alignment=xen["alignment"])
    table = sdata.tables["table"]
    assert table.shape == (150, xen["n_genes"])  # control probes dropped
    assert set(sdata.images) == {"he_image"} and set(sdata.shapes) == {"cell_circles"}
    ctx = resolve(sdata)
    lib = ctx.library("fixture_region")  # experiment.xenium's region_name
    assert (lib.image, lib.coordinate_system, lib.technology) == ("he_image", "global", "xenium")
    assert lib.microns_per_unit == pytest.approx(0.2125) and lib.diameter_um == pytest.approx(12.0)
    np.testing.assert_allclose(ctx.xy_um, xen["xy_um_xenium"], atol=1e-6)  # Xenium's own microns
    level = ctx.pyramid("fixture_region").levels[0]
    assert level.mpp == pytest.approx(xen["mpp_he"])
    # cells land where they were drawn on the H&E, through the rotated alignment
    np.testing.assert_allclose(level.um_to_px(ctx.xy_um), xen["he_px"], atol=1e-6)
    dark = darkness(image_at(sdata, "fixture_region", ctx.xy_um))
    assert dark[xen["on_tissue"]].mean() > dark[~xen["on_tissue"]].mean() + 50
    no_image = nk.io.read_xenium(xen["outs"], library_id="cells_only")
    assert not no_image.images
    cells_only = resolve(no_image).library("cells_only")
    assert cells_only.image is None and cells_only.microns_per_unit == pytest.approx(0.2125)


def test_read_xenium_finds_he_in_folder(xen):
    """An H&E saved in the output folder as spatialdata-io expects is found without he_image=."""
    shutil.copy(xen["he_image"], xen["outs"] / xen["he_image"].name)
    shutil.copy(xen["alignment"], xen["outs"] / xen["alignment"].name)
    sdata = nk.io.read_xenium(xen["outs"])
    ctx = resolve(sdata)
    assert ctx.library("fixture_region").image == "he_image"
    np.testing.assert_allclose(
        ctx.pyramid("fixture_region").levels[0].um_to_px(ctx.xy_um), xen["he_px"], atol=1e-6
    )


def test_read_xenium_bad_inputs(xen, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame(np.eye(2)).to_csv(bad, header=False, index=False)
    with pytest.raises(ValueError, match="3x3"):
        nk.io.read_xenium(xen["outs"], he_image=xen["he_image"], alignment=bad)
    with pytest.raises(ValueError, match="without he_image"):
        nk.io.read_xenium(xen["outs"], alignment=xen["alignment"])
    # the H&E without its alignment: cells fall off the image
    with pytest.raises(ValueError, match="outside the image"):
        nk.io.read_xenium(xen["outs"], he_image=xen["he_image"])
    cells = pd.read_parquet(xen["outs"] / "cells.parquet")
    cells["cell_id"] = "other" + cells["cell_id"]
    cells.to_parquet(xen["outs"] / "cells.parquet")
    with pytest.raises(ValueError, match="no position"):
        nk.io.read_xenium(xen["outs"])
    (xen["outs"] / "cells.zarr.zip").unlink()
    with pytest.raises(FileNotFoundError, match="cells.zarr.zip"):
        nk.io.read_xenium(xen["outs"])
    (xen["outs"] / "experiment.xenium").unlink()
    with pytest.raises(FileNotFoundError, match="experiment.xenium"):
        nk.io.read_xenium(xen["outs"])


def test_spatialdata_concatenate_sections(tmp_path):
    """Two sections read separately and joined by spatialdata.concatenate stay two libraries in microns."""
    import spatialdata

    a = nk.io.read_visium_hd(make_visium_hd(tmp_path / "a", seed=1)["outs"], library_id="A")
    b = nk.io.read_visium_hd(make_visium_hd(tmp_path / "b", grid=15, seed=2)["outs"], library_id="B")
    n_a, n_b = a.tables[HD_TABLE].n_obs, b.tables[HD_TABLE].n_obs
    both = spatialdata.concatenate([a, b], concatenate_tables=True, uns_merge="unique")
    table = both.tables[HD_TABLE]
    assert table.n_obs == n_a + n_b and table.n_vars == 12
    assert table.obs_names.is_unique  # the same bin barcodes in both sections
    assert set(both.shapes) == {"A_square_008um", "B_square_008um"}
    assert set(table.uns["spatial"]) == {"A_square_008um", "B_square_008um"}
    ctx = resolve(both, table_key=HD_TABLE)
    assert sorted(ctx.libraries) == ["A_square_008um", "B_square_008um"]
    for name, part in (("A", a), ("B", b)):
        lib = ctx.library(f"{name}_square_008um")
        _same_library(lib, resolve(part, table_key=HD_TABLE).library(f"{name}_square_008um"))
        assert lib.image == f"{name}_hires_image"
        np.testing.assert_allclose(ctx.xy_um[lib.rows], resolve(part, table_key=HD_TABLE).xy_um)
    assert a.tables[HD_TABLE].n_obs == n_a and set(a.shapes) == {"A_square_008um"}  # inputs untouched


def test_zarr_round_trip_xenium(tmp_path, xen):
    from spatialdata import read_zarr
    from spatialdata.transformations import get_transformation

    sdata = nk.io.read_xenium(xen["outs"], he_image=xen["he_image"], alignment=xen["alignment"])
    sdata.write(tmp_path / "x.zarr")
    back = read_zarr(tmp_path / "x.zarr")
    t0, t1 = sdata.tables["table"], back.tables["table"]
    assert set(back.images) == set(sdata.images) and set(back.shapes) == set(sdata.shapes)
    np.testing.assert_array_equal(t0.X.toarray(), t1.X.toarray())
    pd.testing.assert_frame_equal(t0.obs, t1.obs)
    c0, c1 = resolve(sdata), resolve(back)
    _same_library(c0.library("fixture_region"), c1.library("fixture_region"))
    np.testing.assert_allclose(c0.xy_um, c1.xy_um)
    assert c0.pyramid("fixture_region").levels[0].mpp == pytest.approx(
        c1.pyramid("fixture_region").levels[0].mpp
    )
    m0 = get_transformation(sdata.images["he_image"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    m1 = get_transformation(back.images["he_image"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(m0, m1)
    np.testing.assert_allclose(
        darkness(image_at(back, "fixture_region", c1.xy_um)),
        darkness(image_at(sdata, "fixture_region", c0.xy_um)),
    )


def test_zarr_round_trip_visium_hd(tmp_path, hd):
    from spatialdata import read_zarr

    sdata = nk.io.read_visium_hd(hd["outs"])
    sdata.write(tmp_path / "hd.zarr")
    back = read_zarr(tmp_path / "hd.zarr")
    c0, c1 = resolve(sdata, table_key=HD_TABLE), resolve(back, table_key=HD_TABLE)
    _same_library(c0.library("run1_square_008um"), c1.library("run1_square_008um"))
    np.testing.assert_allclose(c0.xy_um, c1.xy_um)
    np.testing.assert_array_equal(sdata.tables[HD_TABLE].X.toarray(), back.tables[HD_TABLE].X.toarray())
