"""read_visium (over spatialdata_io.visium) on the real Space Ranger folders, and its refusals of bad input."""

from __future__ import annotations

import json
import shutil
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import dataset_path
from fixtures_io import darkness, image_at

import nichekd as nk
from nichekd._core.spatial import resolve

COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
XY = ["pxl_col_in_fullres", "pxl_row_in_fullres"]


def _positions(folder):
    return pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, names=COLS).set_index(
        "barcode"
    )


def _array_mpp(folder) -> float:
    """Microns per full-resolution pixel from the spot array alone: spots of a row are 100 um apart (2 array
    columns), rows 100 * sqrt(3) / 2 um apart; a least-squares fit of pixels to that lattice."""
    pos = _positions(folder)
    um = pos[["array_col", "array_row"]].to_numpy(float) * [50.0, 50.0 * np.sqrt(3)]
    px = pos[XY].to_numpy(float)
    um, px = um - um.mean(0), px - px.mean(0)
    return float(np.sqrt((um**2).sum() / (px**2).sum()))


def _scalefactors(folder):
    return json.loads((folder / "spatial" / "scalefactors_json.json").read_text())


def _resolve(sdata):
    """resolve() without the placeholder warning (asserted where it matters)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*placeholders", category=UserWarning)
        return resolve(sdata)


@pytest.fixture
def tiny_copy(tmp_path):
    src = dataset_path("visium_tiny")
    dst = tmp_path / "visium_tiny"
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def test_visium_tiny_placeholder_hires_skipped_microns_from_spot():
    import spatialdata_io

    folder = dataset_path("visium_tiny")
    with pytest.warns(UserWarning, match="visium_tiny_hires_image.*placeholders"):
        sdata = nk.io.read_visium(folder)
    table = sdata.tables["table"]
    assert table.shape == (100, 100)
    assert set(sdata.images) == {"visium_tiny_hires_image", "visium_tiny_lowres_image"}
    sf = _scalefactors(folder)
    mpp_full = _array_mpp(folder)
    # Space Ranger's spot_diameter_fullres spans a 65 um circle (10x's documentation), not the 55 um spot
    assert mpp_full * sf["spot_diameter_fullres"] == pytest.approx(65.0, rel=0.02)
    ctx = _resolve(sdata)
    lib = ctx.library("visium_tiny")
    assert (lib.image, lib.region, lib.coordinate_system) == ("visium_tiny_lowres_image",) + (
        "visium_tiny",
    ) * 2
    assert lib.microns_per_unit == pytest.approx(mpp_full, rel=0.01)
    assert lib.diameter_um == 55.0 and lib.technology == "visium"
    assert ctx.pyramid("visium_tiny").levels[0].mpp == pytest.approx(
        mpp_full / sf["tissue_lowres_scalef"], rel=0.005
    )
    pos = _positions(folder).loc[table.obs_names]
    np.testing.assert_allclose(ctx.xy_um, pos[XY].to_numpy() * lib.microns_per_unit)
    assert table.obs["in_tissue"].eq(1).all()
    assert table.uns["spatial"]["visium_tiny"]["scalefactors"] == sf
    assert np.issubdtype(table.X.dtype, np.number) and table.X.sum() > 0
    # the adapter adds nothing that changes positions: spatialdata-io's own object resolves the same
    plain = spatialdata_io.visium(folder, dataset_id="visium_tiny")
    np.testing.assert_allclose(_resolve(plain).xy_um, ctx.xy_um)


def test_visium_tiny_spots_on_tissue():
    folder = dataset_path("visium_tiny")
    with pytest.warns(UserWarning):
        sdata = nk.io.read_visium(folder)
    ctx = _resolve(sdata)
    pos = _positions(folder)
    mpp_full = ctx.library("visium_tiny").microns_per_unit
    off = pos[pos["in_tissue"] == 0][XY].to_numpy() * mpp_full
    on_dark = darkness(image_at(sdata, "visium_tiny", ctx.xy_um)).mean()
    off_dark = darkness(image_at(sdata, "visium_tiny", off)).mean()
    assert on_dark > off_dark + 20


def test_visium_mouse_brain_raw_mtx_lowres_only():
    folder = dataset_path("visium_mouse_brain")
    with pytest.raises(FileNotFoundError, match="counts='raw'"):
        nk.io.read_visium(folder)
    sdata = nk.io.read_visium(folder, counts="raw", in_tissue_only=False, library_id="brain")
    table = sdata.tables["table"]
    assert table.shape == (4992, 100)
    assert int(table.obs["in_tissue"].sum()) == 2702
    assert set(sdata.images) == {"brain_lowres_image"}
    assert sdata.images["brain_lowres_image"].shape == (3, 600, 576)
    ctx = resolve(sdata)
    lib = ctx.library("brain")
    assert lib.image == "brain_lowres_image"
    assert lib.microns_per_unit == pytest.approx(_array_mpp(folder), rel=0.01)
    dark = darkness(image_at(sdata, "brain", ctx.xy_um))
    inside = table.obs["in_tissue"].to_numpy() == 1
    assert dark[inside].mean() > dark[~inside].mean() + 15
    in_only = nk.io.read_visium(folder, counts="raw", library_id="brain")
    assert in_only.tables["table"].n_obs == 2702 and len(in_only.shapes["brain"]) == 2702
    kept = in_only.tables["table"]
    np.testing.assert_allclose(resolve(in_only).xy_um, ctx.xy_um[inside])
    assert list(in_only.shapes["brain"].index) == list(kept.obs["spot_id"])


def test_visium_user_mpp_overrides():
    folder = dataset_path("visium_mouse_brain")
    sdata = nk.io.read_visium(folder, counts="raw", mpp=1.0)
    table = sdata.tables["table"]
    ctx = resolve(sdata)
    pos = _positions(folder).loc[table.obs_names]
    np.testing.assert_allclose(ctx.xy_um, pos[XY].to_numpy())
    assert ctx.library("visium_mouse_brain").microns_per_unit == 1.0
    assert ctx.pyramid("visium_mouse_brain").levels[0].mpp == pytest.approx(1.0 / 0.051033426)
    with pytest.raises(ValueError, match="mpp"):
        nk.io.read_visium(folder, counts="raw", mpp=-1.0)


def test_visium_missing_files(tiny_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="Space Ranger output folder"):
        nk.io.read_visium(tmp_path / "nope")
    spatial = tiny_copy / "spatial"
    for name in ("tissue_hires_image.png", "tissue_lowres_image.png"):
        (spatial / name).rename(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="H&E image.*fullres_image="):
        nk.io.read_visium(tiny_copy)
    (spatial / "scalefactors_json.json").unlink()
    with pytest.raises(FileNotFoundError, match="scalefactors_json.json"):
        nk.io.read_visium(tiny_copy)
    (spatial / "tissue_positions_list.csv").unlink()
    with pytest.raises(FileNotFoundError, match="spot positions file"):
        nk.io.read_visium(tiny_copy)
    (tiny_copy / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(FileNotFoundError, match="filtered count matrix"):
        nk.io.read_visium(tiny_copy)


def test_visium_scalefactors_lacking_keys(tiny_copy):
    p = tiny_copy / "spatial" / "scalefactors_json.json"
    sf = _scalefactors(tiny_copy)
    del sf["tissue_hires_scalef"]
    p.write_text(json.dumps(sf))
    with pytest.raises(KeyError, match="tissue_hires_scalef"):
        nk.io.read_visium(tiny_copy)


def test_visium_barcode_mismatch(tiny_copy):
    p = tiny_copy / "spatial" / "tissue_positions_list.csv"
    df = pd.read_csv(p, header=None)
    df[0] = "X" + df[0]
    df.to_csv(p, header=False, index=False)
    with pytest.raises(ValueError, match="no position"):
        nk.io.read_visium(tiny_copy)


def test_visium_spots_off_image(tiny_copy):
    p = tiny_copy / "spatial" / "scalefactors_json.json"
    sf = _scalefactors(tiny_copy)
    sf["tissue_lowres_scalef"] *= 10  # the wrong image resolution
    p.write_text(json.dumps(sf))
    with pytest.raises(ValueError, match="outside the image"):
        nk.io.read_visium(tiny_copy)


def test_visium_all_images_blank(tiny_copy):
    spatial = tiny_copy / "spatial"
    shutil.copy(spatial / "tissue_hires_image.png", spatial / "tissue_lowres_image.png")
    with pytest.raises(ValueError, match="Every H&E image .* is blank"):
        nk.io.read_visium(tiny_copy)


def test_visium_non_count_matrix(tiny_copy):
    with h5py.File(tiny_copy / "filtered_feature_bc_matrix.h5", "r+") as f:
        values = f["matrix/data"][:].astype(np.float32) * 0.37
        del f["matrix/data"]
        f["matrix/data"] = values
    with pytest.raises(ValueError, match="non-integer"):
        nk.io.read_visium(tiny_copy)


def test_visium_bad_options():
    folder = dataset_path("visium_tiny")
    with pytest.raises(ValueError, match="counts must be"):
        nk.io.read_visium(folder, counts="all")
    with pytest.raises(ValueError, match="mpp"):
        nk.io.read_visium(folder, mpp=0)


def test_visium_zarr_round_trip(tmp_path):
    from spatialdata import read_zarr

    with pytest.warns(UserWarning):
        sdata = nk.io.read_visium(dataset_path("visium_tiny"))
    sdata.write(tmp_path / "v.zarr")
    back = read_zarr(tmp_path / "v.zarr")
    c0, c1 = _resolve(sdata), _resolve(back)
    a, b = c0.library("visium_tiny"), c1.library("visium_tiny")
    assert (a.image, a.region, a.coordinate_system, a.diameter_um, a.technology) == (
        b.image,
        b.region,
        b.coordinate_system,
        b.diameter_um,
        b.technology,
    )
    assert a.microns_per_unit == pytest.approx(b.microns_per_unit)
    np.testing.assert_allclose(c0.xy_um, c1.xy_um)
    assert c0.pyramid("visium_tiny").levels[0].mpp == pytest.approx(c1.pyramid("visium_tiny").levels[0].mpp)
    t0, t1 = sdata.tables["table"], back.tables["table"]
    np.testing.assert_array_equal(t0.X.toarray(), t1.X.toarray())
    assert (
        t1.uns["spatial"]["visium_tiny"]["scalefactors"] == t0.uns["spatial"]["visium_tiny"]["scalefactors"]
    )
    np.testing.assert_array_equal(
        back.images["visium_tiny_lowres_image"].values, sdata.images["visium_tiny_lowres_image"].values
    )
    np.testing.assert_allclose(
        darkness(image_at(back, "visium_tiny", c1.xy_um)), darkness(image_at(sdata, "visium_tiny", c0.xy_um))
    )
