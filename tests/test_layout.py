"""The layout builder of nichekd's own readers: element names, micron registration, units in uns, errors."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from spatialdata.transformations import get_transformation

from nichekd._core.keys import LIBRARY_KEY, SPATIAL_KEY
from nichekd._core.spatial import resolve
from nichekd._core.table import get_table
from nichekd.io._build import build_library


def _adata(n=50, g=8):
    a = ad.AnnData(sp.random(n, g, density=0.5, format="csr", dtype=np.float32, random_state=0))
    a.obs_names = [f"c{i}" for i in range(n)]
    return a


def test_build_library_layout():
    img = np.random.default_rng(1).integers(0, 255, (600, 520, 3), dtype=np.uint8)  # not a blank placeholder
    xy = np.random.default_rng(0).uniform(0, 250, size=(50, 2))
    s = build_library(_adata(), library="s1", xy_um=xy, diameter_um=10, kind="cell", image=img, mpp=0.5)
    assert set(s.images) == {"s1_he"} and set(s.shapes) == {"s1_cells"}
    t = get_table(s)
    assert list(t.obs[LIBRARY_KEY].unique()) == ["s1"]
    assert np.allclose(t.obsm[SPATIAL_KEY], xy)
    assert t.uns["spatial"]["s1"] == {
        "scalefactors": {"microns_per_pixel": 1.0, "spot_diameter_fullres": 10.0},
        "metadata": {"technology": "unknown", "kind": "cell"},
    }
    ctx = resolve(s)
    lib = ctx.library("s1")
    assert (lib.image, lib.region, lib.coordinate_system, lib.microns_per_unit) == (
        "s1_he",
        "s1_cells",
        "s1",
        1.0,
    )
    assert lib.diameter_um == 10.0 and ctx.pyramid("s1").levels[0].mpp == 0.5
    np.testing.assert_allclose(ctx.xy_um, xy)
    tr = get_transformation(s.images["s1_he"], to_coordinate_system="s1")
    assert np.allclose(tr.to_affine_matrix(("x", "y"), ("x", "y"))[:2, :2], np.eye(2) * 0.5)
    assert list(s.images["s1_he"].keys())[:2] == ["scale0", "scale1"]  # a pyramid
    assert np.allclose(s.shapes["s1_cells"].radius, 5.0)


def test_library_without_image_round_trips(tmp_path):
    import spatialdata as sd

    s = build_library(_adata(), library="s2", xy_um=np.zeros((50, 2)), diameter_um=55)
    s.write(tmp_path / "x.zarr")
    back = sd.read_zarr(tmp_path / "x.zarr")
    lib = resolve(back).library("s2")
    assert lib.image is None and lib.microns_per_unit == 1.0 and lib.diameter_um == 55
    assert get_table(back).uns["spatial"]["s2"]["scalefactors"]["microns_per_pixel"] == 1.0
    with pytest.raises(ValueError, match="has no H&E image"):
        resolve(back).pyramid("s2")


def test_bad_inputs():
    a = _adata()
    with pytest.raises(ValueError, match="shape"):
        build_library(a, library="s", xy_um=np.zeros((3, 2)), diameter_um=1)
    with pytest.raises(ValueError, match="NaN"):
        build_library(a, library="s", xy_um=np.full((50, 2), np.nan), diameter_um=1)
    with pytest.raises(ValueError, match="RGB"):
        build_library(
            a,
            library="s",
            xy_um=np.zeros((50, 2)),
            diameter_um=1,
            image=np.zeros((5, 10, 10), np.uint16),
            mpp=1,
        )
    with pytest.raises(ValueError, match="mpp"):
        build_library(a, library="s", xy_um=np.zeros((50, 2)), diameter_um=1, image=np.zeros((10, 10, 3)))
    with pytest.raises(KeyError, match="table_key"):
        get_table(build_library(a, library="s", xy_um=np.zeros((50, 2)), diameter_um=1), "nope")
    # without the recorded units (uns['spatial']) a table's coordinates are never taken for microns
    s = build_library(a, library="s", xy_um=np.zeros((50, 2)), diameter_um=1)
    del s.tables["table"].uns["spatial"]
    with pytest.raises(ValueError, match="microns_per_unit="):
        resolve(s)
