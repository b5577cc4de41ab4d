"""Objects as spatialdata-io and colleagues make them go through the whole pipeline (issue 12).

No nichekd reader is used here: spatialdata-io's Visium reader (pixel coordinate systems, an all-black placeholder
hires image), a pixel object with a scale transform, two sections joined with ``spatialdata.concatenate``, and
a zarr round trip in the middle of the pipeline.
"""

from __future__ import annotations

import json
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from conftest import REPO, dataset_path
from spatialdata.transformations import Identity, Scale, get_transformation, set_transformation

import nichekd as nk
from nichekd._core.neighbors import estimate_radius
from nichekd._core.spatial import micron_coords, resolve

FAST = {"epochs": 3, "device": "cpu", "progress": False}


def _visium_tiny(dataset_id: str = "tiny"):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    root = dataset_path("visium_tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # spatialdata's note on a categorical region column
        return spatialdata_io.visium(root, dataset_id=dataset_id), root


def _snapshot(sdata) -> tuple:
    t = sdata.tables["table"]
    return (
        sorted(sdata.images),
        sorted(sdata.shapes),
        sorted(t.obs.columns),
        sorted(t.obsm),
        sorted(t.uns),
        np.asarray(t.obsm["spatial"]).copy(),
    )


def _same(a: tuple, b: tuple) -> bool:
    return a[:5] == b[:5] and np.array_equal(a[5], b[5])


def test_visium_from_spatialdata_io_whole_pipeline():
    sdata, root = _visium_tiny()
    table = sdata.tables["table"]
    ctx = resolve(sdata)
    lib = ctx.library("tiny")
    assert lib.coordinate_system == "tiny" and lib.technology == "visium"
    assert lib.image == "tiny_lowres_image"  # the hires image is an all-black placeholder
    # Visium spots are 100 um apart on a hexagonal array: micron distances follow the array coordinates
    arr = table.obs[["array_col", "array_row"]].to_numpy(float) * [50.0, 50.0 * np.sqrt(3)]
    d_um = np.linalg.norm(ctx.xy_um[:, None] - ctx.xy_um[None], axis=-1)
    d_array = np.linalg.norm(arr[:, None] - arr[None], axis=-1)
    off = ~np.eye(len(arr), dtype=bool)
    np.testing.assert_allclose(d_um[off], d_array[off], rtol=0.01)

    with pytest.warns(UserWarning, match="placeholder"):
        nk.pp.histology_features(sdata, backbone="stain")
    nk.tl.teacher_niches(sdata, n_niches=3, progress=False)
    params = table.uns["teacher_niche"]["params"]
    diameter_px = json.loads((root / "spatial" / "scalefactors_json.json").read_text())[
        "spot_diameter_fullres"
    ]
    from_55um = estimate_radius(
        np.asarray(table.obsm["spatial"], float) * 55.0 / diameter_px, params["n_neighbors_target"]
    )
    assert params["radius_um"] == pytest.approx(from_55um, rel=0.25)
    nk.pp.spatial_split(sdata)
    nk.tl.distill(sdata, features_key="X_stain", **FAST)
    nk.tl.histology_baseline(sdata, method="leiden", n_niches=3, features_key="X_stain")
    scores = nk.tl.evaluate(sdata, predictions=["student_niche", "he_leiden_niche"])
    assert set(scores.index) == {"student_niche", "he_leiden_niche"}
    assert scores["n_cells"].iloc[0] == (table.obs["split"] == "test").sum() > 0
    assert {"spatial_connectivities", "spatial_distances"} <= set(table.obsp)
    axes = nk.pl.niche_map(sdata, keys=("teacher_niche", "student_niche"), show_split=True, show=False)
    assert len(axes) == 2
    plt.close("all")


def test_visium_hd_from_spatialdata_io_whole_pipeline(tmp_path):
    """spatialdata-io's Visium HD object (8 um squares in full-resolution pixels, table "square_008um") as read
    from a fixture in Space Ranger's on-disk layout; no nichekd reader."""
    spatialdata_io = pytest.importorskip("spatialdata_io")
    from fixtures_io import make_visium_hd

    hd = make_visium_hd(tmp_path / "run1", grid=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sdata = spatialdata_io.visium_hd(hd["outs"], dataset_id="run1", load_segmentations_only=False)
    table = sdata.tables["square_008um"]
    nk.tl.teacher_niches(sdata, n_niches=3, progress=False)  # the only table: no table_key= needed
    params = table.uns["teacher_niche"]["params"]
    # 8 um bins on a square grid: ~10 neighbours lie within ~14 um (pi r^2 = 10 * 64 um^2 + the bin itself)
    assert 10 < params["radius_um"] < 20
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=32.0)
    nk.pp.spatial_split(sdata, buffer_um=8.0)
    nk.tl.distill(sdata, features_key="X_stain", **FAST)
    nk.tl.histology_baseline(sdata, method="kmeans", n_niches=3, features_key="X_stain")
    scores = nk.tl.evaluate(sdata, predictions=["student_niche", "he_kmeans_niche"])
    assert scores["n_cells"].iloc[0] == (table.obs["split"] == "test").sum() > 0
    ax = nk.pl.niche_map(sdata, keys="student_niche", show=False)
    assert ax.get_xlim()[1] > ax.get_xlim()[0]
    plt.close("all")


def _pixel_object(mpp: float):
    """A synthetic section moved into a pixel coordinate system: shapes and image in pixels, a downscaled copy
    of the image registered by a scale transform, nothing saying how large a pixel is."""
    micron = nk.datasets.synthetic_tissue(n_cells=1200, n_niches=3, random_state=4, progress=False)
    t = micron.tables["table"]
    image = micron.images["synthetic_he"]
    pixel_image = next(iter(image["scale0"].values())).copy()
    set_transformation(pixel_image, {"global": Identity()}, set_all=True)
    small = next(iter(image["scale1"].values())).copy()
    set_transformation(small, {"global": Scale([2.0, 2.0], axes=("y", "x"))}, set_all=True)
    shapes = micron.shapes["synthetic_cells"].copy()
    shapes = shapes.set_geometry(shapes.geometry.scale(1 / mpp, 1 / mpp, origin=(0, 0)))
    shapes["radius"] = shapes["radius"] / mpp
    set_transformation(shapes, {"global": Identity()}, set_all=True)
    table = t.copy()
    table.obsm["spatial"] = np.asarray(t.obsm["spatial"]) / mpp
    del table.uns["spatial"]
    del table.obs["library"]
    pixel = sd.SpatialData(
        images={"he": pixel_image, "he_small": small},
        shapes={"synthetic_cells": shapes},
        tables={"table": table},
    )
    return micron, pixel


def test_pixel_coordinate_system_with_scale_transform():
    mpp = resolve(nk.datasets.synthetic_tissue(n_cells=50, random_state=4, progress=False)).pyramid(
        "synthetic"
    )
    micron, pixel = _pixel_object(mpp.levels[0].mpp)
    before = _snapshot(pixel)
    with pytest.raises(ValueError, match="set_units"):
        nk.tl.teacher_niches(pixel, n_niches=3, progress=False)
    assert _same(before, _snapshot(pixel))
    nk.pp.set_units(pixel, microns_per_unit=mpp.levels[0].mpp, coordinate_system="global")
    np.testing.assert_allclose(micron_coords(pixel), micron_coords(micron), atol=1e-6)
    assert resolve(pixel).library("synthetic_cells").image == "he"  # the finest image holding the cells
    for s in (micron, pixel):
        nk.tl.teacher_niches(s, n_niches=3, progress=False, random_state=0)
        nk.pp.histology_features(s, backbone="stain")
    a, b = micron.tables["table"], pixel.tables["table"]
    assert a.uns["teacher_niche"]["params"]["radius_um"] == pytest.approx(
        b.uns["teacher_niche"]["params"]["radius_um"]
    )
    np.testing.assert_array_equal(a.obs["teacher_niche"].to_numpy(), b.obs["teacher_niche"].to_numpy())
    np.testing.assert_allclose(a.obsm["X_stain"], b.obsm["X_stain"], rtol=1e-5, atol=1e-5)
    # the rest of the pipeline on the pixel object: same split, student, baseline and scores as in microns
    for s in (micron, pixel):
        nk.pp.spatial_split(s)
        nk.tl.distill(s, features_key="X_stain", random_state=0, **FAST)
        nk.tl.histology_baseline(s, method="kmeans", n_niches=3, features_key="X_stain")
    np.testing.assert_array_equal(a.obs["split"].to_numpy(), b.obs["split"].to_numpy())
    scores = [nk.tl.evaluate(s, predictions=["student_niche", "he_kmeans_niche"]) for s in (micron, pixel)]
    pd.testing.assert_frame_equal(scores[0], scores[1], atol=1e-6)
    ax = nk.pl.niche_map(pixel, keys="student_niche", show=False)
    assert ax.get_xlim()[1] > ax.get_xlim()[0]
    plt.close("all")


def test_two_sections_joined_with_spatialdata_concatenate():
    a, _ = _visium_tiny("A")
    b, _ = _visium_tiny("B")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicated barcodes are made unique
        both = sd.concatenate([a, b], concatenate_tables=True)
    table = both.tables["table"]
    ctx = resolve(both, library_key="region")
    assert sorted(ctx.libraries) == ["A", "B"]
    assert ctx.library("A").image == "A_lowres_image" and ctx.library("B").image == "B_lowres_image"
    with pytest.warns(UserWarning, match="placeholder"):
        nk.pp.histology_features(both, backbone="stain", library_key="region", standardize="library")
    nk.tl.teacher_niches(both, n_niches=3, library_key="region", progress=False)
    nk.pp.spatial_split(both, method="libraries", test_libraries=["B"], library_key="region")
    nk.tl.distill(both, features_key="X_stain", library_key="region", **FAST)
    assert table.obs.loc[table.obs["region"] == "B", "split"].eq("test").all()
    scores = nk.tl.evaluate(both)
    assert scores.loc["student_niche", "n_cells"] == (table.obs["region"] == "B").sum()


def test_sections_joined_without_their_units_name_the_fix():
    """spatialdata.concatenate drops uns['spatial'] by default: the error says how to keep it."""
    root = dataset_path("st_mob")
    parts = [
        nk.io.read_st(
            root / f"{s}.tsv.gz", root / f"alignment_table_{s}.tsv", root / f"{s}.jpg", library_id=s
        )
        for s in ("MOB1", "MOB2")
    ]
    lost = sd.concatenate(parts, concatenate_tables=True)
    before = lost.tables["table"].copy()
    with pytest.raises(ValueError, match="uns_merge='unique'"):
        nk.tl.teacher_niches(lost, n_niches=3, progress=False)
    after = lost.tables["table"]
    pd.testing.assert_frame_equal(after.obs, before.obs)
    assert list(after.obsm) == list(before.obsm) and list(after.obsp) == list(before.obsp)
    assert sorted(after.uns) == sorted(before.uns)
    kept = sd.concatenate(parts, concatenate_tables=True, uns_merge="unique")
    nk.tl.teacher_niches(kept, n_niches=3, progress=False)
    assert kept.tables["table"].obs["teacher_niche"].nunique() == 3


def test_zarr_round_trip_mid_pipeline_gives_identical_results(tmp_path):
    sdata, _ = _visium_tiny()
    with pytest.warns(UserWarning, match="placeholder"):
        nk.pp.histology_features(sdata, backbone="stain")
    nk.tl.teacher_niches(sdata, n_niches=3, progress=False)
    nk.pp.spatial_split(sdata)
    sdata.write(tmp_path / "tiny.zarr")
    back = sd.read_zarr(tmp_path / "tiny.zarr")
    for s in (sdata, back):
        nk.tl.distill(s, features_key="X_stain", random_state=0, **FAST)
    a, b = sdata.tables["table"], back.tables["table"]
    np.testing.assert_allclose(micron_coords(sdata), micron_coords(back))
    pd.testing.assert_series_equal(
        a.obs["student_niche"].astype(str), b.obs["student_niche"].astype(str), check_names=False
    )
    np.testing.assert_array_equal(a.obsm["student_niche_proba"], b.obsm["student_niche_proba"])


def test_bad_objects_raise_clear_errors_and_leave_the_object_untouched():
    sdata, _ = _visium_tiny()
    # no image at all
    no_image = sd.SpatialData(shapes=dict(sdata.shapes), tables=dict(sdata.tables))
    before = _snapshot(no_image)
    with pytest.raises(ValueError, match="no usable H&E image|no H&E image"):
        nk.pp.histology_features(no_image, backbone="stain")
    assert _same(before, _snapshot(no_image))
    # the image in a coordinate system the spots do not share
    elsewhere = sd.SpatialData(
        images={"he": sdata.images["tiny_lowres_image"]}, shapes=dict(sdata.shapes), tables=dict(sdata.tables)
    )
    set_transformation(elsewhere.images["he"], {"other": Identity()}, set_all=True)
    assert "tiny" not in get_transformation(elsewhere.images["he"], get_all=True)
    before = _snapshot(elsewhere)
    with pytest.raises(ValueError, match="no H&E image registered to its coordinate system"):
        nk.pp.histology_features(elsewhere, backbone="stain")
    assert _same(before, _snapshot(elsewhere))
    # unknown units: shapes in pixels with nothing saying how large a pixel is
    unknown = sd.SpatialData(shapes=dict(sdata.shapes), tables={"table": sdata.tables["table"].copy()})
    unknown.attrs = {}
    t = unknown.tables["table"]
    del t.obs["array_row"], t.obs["array_col"]
    t.uns.pop("spatial", None)
    before = _snapshot(unknown)
    with pytest.raises(ValueError, match=r"Cannot tell the units.*set_units"):
        nk.tl.teacher_niches(unknown, n_niches=3, progress=False)
    assert _same(before, _snapshot(unknown))


def test_readme_quickstart_runs(tmp_path, monkeypatch):

    text = (REPO / "README.md").read_text()
    start = text.index("## Quickstart")
    block = text[
        text.index("```python", start) + len("```python") : text.index(
            "```", text.index("```python", start) + 9
        )
    ]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.replace("n_cells=5_000", "n_cells=2_000"), "README quickstart", "exec"), namespace)
    plt.close("all")
    assert (tmp_path / "tissue.zarr").exists() and (tmp_path / "student").exists()
