"""Tissue detection on synthetic H&E slides with pen marks, dust and a lumen."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from spatialdata import SpatialData

from nichekd._core.keys import image_name
from nichekd.io._build import make_image
from nichekd.pp._tissue import tissue_mask, tissue_tiles

MPP = 2.0
LIB = "slide"


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def synthetic_slide(seed: int = 0, pens: bool = True):
    """A 2 um/px 'slide' (3 x 4 mm): two tissue pieces (one with a lumen), pen marks and dust.

    Returns the RGB image, the true tissue mask (lumen filled) and the pixel masks of the pens.
    """
    rng = np.random.default_rng(seed)
    shape = (1500, 2000)
    img = np.clip(rng.normal(238, 4, shape + (3,)), 0, 255)  # glass: bright, grey
    piece1 = _ellipse(shape, 600, 600, 350, 420)
    piece2 = _ellipse(shape, 1000, 1500, 300, 250)
    lumen = _ellipse(shape, 600, 600, 90, 120)
    tissue = piece1 | piece2
    eosin = np.array([225, 140, 185]) + rng.normal(0, 12, shape + (3,))
    img[tissue] = eosin[tissue]
    nuclei = tissue & (rng.random(shape) < 0.08)
    img[nuclei] = np.array([95, 60, 150])  # haematoxylin purple
    img[lumen] = rng.normal(236, 4, (lumen.sum(), 3))  # a lumen looks like glass
    pen = {}
    if pens:
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        pen["blue"] = (np.abs(yy - 0.25 * xx - 1150) < 8) & (xx < 900)  # stroke in the lower-left background
        pen["green"] = np.abs(np.hypot(yy - 250, xx - 1600) - 150) < 6  # circle in the upper right
        pen["black"] = _ellipse(shape, 1350, 1100, 40, 60)
        img[pen["blue"]] = [40, 60, 185]
        img[pen["green"]] = [45, 150, 80]
        img[pen["black"]] = [25, 25, 30]
    # dust: small saturated or dark specks scattered over the glass (< 0.01 mm2 each)
    for _ in range(40):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        speck = _ellipse(shape, cy, cx, rng.integers(2, 8), rng.integers(2, 8)) & ~tissue
        img[speck] = rng.choice([[200, 120, 160], [90, 90, 90], [120, 80, 60]])
    truth = tissue  # lumen filled
    return img.astype(np.uint8), truth, pen


@pytest.fixture(scope="module")
def slide():
    return synthetic_slide()


def _sdata(img):
    return SpatialData(images={image_name(LIB): make_image(img, MPP, LIB)})


def _raster(gdf, shape, mpp=MPP):
    """Rasterise polygons at pixel centres (x, y in microns)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    union = shapely.union_all(gdf.geometry.values)
    return shapely.contains_xy(union, (xx.ravel() + 0.5) * mpp, (yy.ravel() + 0.5) * mpp).reshape(shape)


def test_tissue_found_pens_and_dust_ignored(slide):
    img, truth, pen = slide
    sdata = _sdata(img)
    assert tissue_mask(sdata) is None
    gdf = sdata.shapes[f"{LIB}_tissue"]
    assert len(gdf) == 2, gdf  # two pieces; no pen stroke, ink blot or dust speck
    pred = _raster(gdf, truth.shape)
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert iou > 0.93, iou
    for name, m in pen.items():
        assert pred[m].mean() < 0.02, name
    # the lumen is filled, its centre is tissue
    assert gdf.geometry.contains(shapely.Point(600 * MPP, 600 * MPP)).any()
    np.testing.assert_allclose(gdf["area_um2"].sum(), truth.sum() * MPP**2, rtol=0.06)
    params = sdata.attrs["nichekd"]["tissue"][f"{LIB}_tissue"]["params"]
    assert params["library"] == LIB and 5.0 <= params["mpp"] <= 10.0  # the 8 um level of the pyramid


def test_pens_become_tissue_without_ink_removal(slide):
    img, truth, pen = slide
    gdf = tissue_mask(_sdata(img), remove_ink=False, copy=True)
    assert _raster(gdf, truth.shape)[pen["blue"]].mean() > 0.5  # the ink filter is what removes them


def test_copy_leaves_input_untouched_and_is_deterministic(slide):
    img, *_ = slide
    sdata = _sdata(img)
    a = tissue_mask(sdata, copy=True, key_added="t")
    b = tissue_mask(sdata, copy=True, key_added="t")
    assert "t" not in sdata.shapes and "nichekd" not in sdata.attrs
    assert a.geometry.equals(b.geometry)
    from spatialdata.transformations import get_transformation

    assert get_transformation(a, to_coordinate_system=LIB).to_affine_matrix(("x", "y"), ("x", "y"))[0, 0] == 1


def test_min_area_and_level_choice(slide):
    img, *_ = slide
    sdata = _sdata(img)
    # the pieces cover 1.85 and 0.94 mm2: a 1.2 mm2 minimum keeps only the larger
    gdf = tissue_mask(sdata, min_area_um2=1.2e6, copy=True)
    assert len(gdf) == 1 and gdf["area_um2"].iloc[0] > 1.2e6
    # an explicit finer level gives the same outline
    fine = tissue_mask(sdata, level=0, target_mpp=4.0, copy=True)
    coarse = tissue_mask(sdata, copy=True)
    inter = shapely.union_all(fine.geometry.values).intersection(shapely.union_all(coarse.geometry.values))
    assert inter.area / shapely.union_all(fine.geometry.values).area > 0.95


def test_blank_slide_raises():
    rng = np.random.default_rng(1)
    blank = np.clip(rng.normal(238, 4, (400, 400, 3)), 0, 255).astype(np.uint8)
    sdata = _sdata(blank)
    with pytest.raises(ValueError, match="No tissue"):
        tissue_mask(sdata)
    assert len(sdata.shapes) == 0


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [
        ({"image_key": "nope"}, KeyError),
        ({"library": "other"}, KeyError),
        ({"target_mpp": 0}, ValueError),
        ({"min_area_um2": -1}, ValueError),
        ({"level": 9}, ValueError),
        ({"saturation_threshold": 2.0}, ValueError),
        ({"key_added": image_name(LIB)}, ValueError),
    ],
)
def test_bad_input_raises_and_leaves_data_untouched(slide, kwargs, err):
    img, *_ = slide
    sdata = _sdata(img[:300, :300])
    with pytest.raises(err):
        tissue_mask(sdata, **kwargs)
    assert len(sdata.shapes) == 0 and "nichekd" not in sdata.attrs


def test_not_spatialdata_raises():
    import anndata as ad

    with pytest.raises(TypeError, match="SpatialData"):
        tissue_mask(ad.AnnData(np.zeros((3, 2))))


@pytest.mark.parametrize("grid", ["square", "hex"])
def test_tissue_tiles_inside_and_cover(slide, grid):
    img, truth, _ = slide
    sdata = _sdata(img)
    tissue_mask(sdata)
    tile = 50.0
    xy = tissue_tiles(sdata, tile_size_um=tile, grid=grid)
    union = shapely.union_all(sdata.shapes[f"{LIB}_tissue"].geometry.values)
    assert xy.shape[1] == 2 and len(xy) > 100
    assert shapely.intersects_xy(union, xy[:, 0], xy[:, 1]).all()
    cell_area = tile**2 * (np.sqrt(3) / 2 if grid == "hex" else 1.0)
    np.testing.assert_allclose(len(xy) * cell_area, union.area, rtol=0.05)
    # nearest-neighbour spacing is the tile size on both grids
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    np.testing.assert_allclose(np.median(d[:, 1]), tile, rtol=1e-6)
    if grid == "square":
        np.testing.assert_allclose(np.mod(xy - tile / 2, tile), 0, atol=1e-6)


def test_tissue_tiles_needs_a_mask(slide):
    img, *_ = slide
    with pytest.raises(KeyError, match="tissue_mask"):
        tissue_tiles(_sdata(img[:200, :200]), tile_size_um=50)
    with pytest.raises(ValueError, match="grid"):
        tissue_tiles(_sdata(img[:200, :200]), tile_size_um=50, grid="tri")
    with pytest.raises(ValueError, match="tile_size_um"):
        tissue_tiles(_sdata(img[:200, :200]), tile_size_um=-1)
