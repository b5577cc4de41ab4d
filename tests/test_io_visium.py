"""read_visium on the real Space Ranger folders, and its refusals of bad input."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import dataset_path
from fixtures_io import darkness, image_at

import nichekd as nk
from nichekd._layout import library_infos

COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _positions(folder):
    return pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, names=COLS).set_index(
        "barcode"
    )


@pytest.fixture
def tiny_copy(tmp_path):
    src = dataset_path("visium_tiny")
    dst = tmp_path / "visium_tiny"
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def test_visium_tiny_blank_hires_falls_back_to_lowres():
    folder = dataset_path("visium_tiny")
    with pytest.warns(UserWarning, match="tissue_hires_image.png is blank"):
        sdata = nk.io.read_visium(folder)
    table = sdata.tables["table"]
    assert table.shape == (100, 100)
    info = library_infos(table)["visium_tiny"]
    sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    mpp_full = 55.0 / sf["spot_diameter_fullres"]
    assert info.mpp == pytest.approx(mpp_full / sf["tissue_lowres_scalef"])
    assert info.diameter_um == 55.0 and info.kind == "spot" and info.technology == "visium"
    assert sdata.images["visium_tiny_he"]["scale0"]["image"].shape == (3, 600, 600)
    pos = _positions(folder).loc[table.obs_names]
    np.testing.assert_allclose(
        table.obsm["spatial"], pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]] * mpp_full
    )
    assert table.obs["in_tissue"].eq(1).all()
    assert np.issubdtype(table.X.dtype, np.number) and table.X.sum() > 0


def test_visium_tiny_spots_on_tissue():
    folder = dataset_path("visium_tiny")
    with pytest.warns(UserWarning):
        sdata = nk.io.read_visium(folder)
    table = sdata.tables["table"]
    pos = _positions(folder)
    mpp_full = library_infos(table)["visium_tiny"].mpp * 0.045004502
    off = pos[pos["in_tissue"] == 0][["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy() * mpp_full
    on_dark = darkness(image_at(sdata, "visium_tiny", table.obsm["spatial"])).mean()
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
    assert sdata.images["brain_he"]["scale0"]["image"].shape == (3, 600, 576)
    dark = darkness(image_at(sdata, "brain", table.obsm["spatial"]))
    inside = table.obs["in_tissue"].to_numpy() == 1
    assert dark[inside].mean() > dark[~inside].mean() + 15
    in_only = nk.io.read_visium(folder, counts="raw")
    assert in_only.tables["table"].n_obs == 2702


def test_visium_user_mpp_overrides():
    folder = dataset_path("visium_mouse_brain")
    sdata = nk.io.read_visium(folder, counts="raw", mpp=1.0)
    table = sdata.tables["table"]
    pos = _positions(folder).loc[table.obs_names]
    np.testing.assert_allclose(table.obsm["spatial"][:, 0], pos["pxl_col_in_fullres"])
    assert library_infos(table)["visium_mouse_brain"].mpp == pytest.approx(1.0 / 0.051033426)
    with pytest.raises(ValueError, match="mpp"):
        nk.io.read_visium(folder, counts="raw", mpp=-1.0)


def test_visium_missing_files(tiny_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="Space Ranger output folder"):
        nk.io.read_visium(tmp_path / "nope")
    (tiny_copy / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(FileNotFoundError, match="scalefactors_json.json"):
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
    sf = json.loads(p.read_text())
    sf["tissue_lowres_scalef"] *= 10  # the wrong image resolution
    p.write_text(json.dumps(sf))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="outside the image"):
        nk.io.read_visium(tiny_copy)


def test_visium_all_images_blank(tiny_copy):
    shutil.copy(
        tiny_copy / "spatial" / "tissue_hires_image.png", tiny_copy / "spatial" / "tissue_lowres_image.png"
    )
    with pytest.raises(ValueError, match="Every H&E image is blank"):
        nk.io.read_visium(tiny_copy)


def test_visium_non_count_matrix(tiny_copy):
    with h5py.File(tiny_copy / "filtered_feature_bc_matrix.h5", "r+") as f:
        data = f["matrix/data"]
        values = data[:].astype(np.float32) * 0.37
        del f["matrix/data"]
        f["matrix/data"] = values
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="non-integer"):
        nk.io.read_visium(tiny_copy)


def test_visium_bad_options():
    folder = dataset_path("visium_tiny")
    with pytest.raises(ValueError, match="counts must be"):
        nk.io.read_visium(folder, counts="all")
    with pytest.raises(ValueError, match="image must be"):
        nk.io.read_visium(folder, image="fullres")


def test_visium_zarr_round_trip_multiscale(tmp_path):
    from spatialdata import read_zarr

    with pytest.warns(UserWarning):
        sdata = nk.io.read_visium(dataset_path("visium_tiny"))
    sdata.write(tmp_path / "v.zarr")
    back = read_zarr(tmp_path / "v.zarr")
    assert list(back.images["visium_tiny_he"].children) == list(sdata.images["visium_tiny_he"].children)
    np.testing.assert_array_equal(
        back.images["visium_tiny_he"]["scale1"]["image"].values,
        sdata.images["visium_tiny_he"]["scale1"]["image"].values,
    )
    t0, t1 = sdata.tables["table"], back.tables["table"]
    assert library_infos(t0) == library_infos(t1)
    np.testing.assert_array_equal(t0.X.toarray(), t1.X.toarray())
    np.testing.assert_allclose(
        darkness(image_at(back, "visium_tiny", t1.obsm["spatial"])),
        darkness(image_at(sdata, "visium_tiny", t0.obsm["spatial"])),
    )
