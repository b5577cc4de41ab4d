"""Image access and patch extraction: geometry at every level and transform, borders, chunk-wise reads."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from spatialdata.transformations import Affine, Scale, Sequence, Translation, set_transformation

from nichekd._core import patches as _image
from nichekd._core.spatial import resolve
from nichekd.io._build import build_library

MARKER_UM = (300.0, 200.0)


def _sdata(mpp: float = 0.5, shape=(1500, 1700), marker_um=MARKER_UM, mpp_y: float | None = None):
    """White-ish image with a black 8-pixel square at ``marker_um`` (for square pixels of ``mpp``)."""
    img = np.full((*shape, 3), 230, np.uint8)
    cx, cy = int(marker_um[0] / mpp), int(marker_um[1] / (mpp_y or mpp))
    img[cy - 8 : cy + 8, cx - 8 : cx + 8] = 0
    a = ad.AnnData(np.zeros((2, 1), np.float32))
    return build_library(
        a, library="L", xy_um=np.array([marker_um, (5.0, 5.0)]), diameter_um=10, image=img, mpp=mpp
    )


def _marker_centre(patch: np.ndarray) -> tuple[float, float]:
    dark = patch.min(0) < 115
    assert dark.any(), "marker not in the patch"
    ys, xs = np.nonzero(dark)
    return float(xs.mean()), float(ys.mean())


def test_marker_at_patch_centre_on_every_level():
    sdata = _sdata()
    pyr = _image.image_pyramid(sdata, "L_he", "L")
    assert len(pyr.levels) == 3
    assert [lv.mpp for lv in pyr.levels] == [0.5, 1.0, 2.0]
    for lv in pyr.levels:
        patch = _image.read_patches(pyr, np.array([MARKER_UM]), 64.0, 32, level=lv)[0]
        assert patch.shape == (3, 32, 32)
        cx, cy = _marker_centre(patch)
        assert abs(cx - 15.5) < 0.6 and abs(cy - 15.5) < 0.6, (lv.index, cx, cy)


def test_marker_off_centre_lands_where_expected():
    sdata = _sdata()
    pyr = _image.image_pyramid(sdata, "L_he", "L")
    # centre 16 um right and 8 um below the marker: marker at (-16, -8) um from the centre, 2 um per output px
    patch = _image.read_patches(pyr, np.array([[MARKER_UM[0] + 16, MARKER_UM[1] + 8]]), 64.0, 32)[0]
    cx, cy = _marker_centre(patch)
    assert abs(cx - (15.5 - 8)) < 0.6 and abs(cy - (15.5 - 4)) < 0.6


def test_level_choice_is_coarsest_not_coarser_than_needed():
    pyr = _image.image_pyramid(_sdata(), "L_he", "L")
    assert pyr.level_for(1.0).index == 1
    assert pyr.level_for(1.5).index == 1
    assert pyr.level_for(0.3).index == 0  # nothing fine enough: the finest
    assert pyr.level_for(5.0).index == 2


def test_non_square_pixels():
    # pixels 0.5 um wide and 0.25 um tall
    sdata = _sdata(mpp=0.5, mpp_y=0.25, shape=(1700, 1500))
    el = sdata.images["L_he"]
    set_transformation(el, Scale([0.25, 0.5], axes=("y", "x")), to_coordinate_system="L")
    pyr = _image.image_pyramid(sdata, "L_he", "L")
    assert pyr.levels[0].mpp_xy == (0.5, 0.25)
    for lv in pyr.levels:
        patch = _image.read_patches(pyr, np.array([MARKER_UM]), 64.0, 32, level=lv)[0]
        cx, cy = _marker_centre(patch)
        assert abs(cx - 15.5) < 0.6 and abs(cy - 15.5) < 0.6, lv.index
        # 16 px wide (8 um) and 16 px tall (4 um): 4 and 2 output pixels of 2 um -> wider than tall
        dark = 230.0 - patch.min(0)
        assert (dark.sum(0) > 50).sum() > (dark.sum(1) > 50).sum()


def test_translation_and_affine_rotation():
    sdata = _sdata()
    el = sdata.images["L_he"]
    # image shifted by (100, 50) um: the marker moves with it
    set_transformation(
        el,
        Sequence([Scale([0.5, 0.5], axes=("y", "x")), Translation([50, 100], axes=("y", "x"))]),
        to_coordinate_system="L",
    )
    pyr = _image.image_pyramid(sdata, "L_he", "L")
    patch = _image.read_patches(pyr, np.array([[MARKER_UM[0] + 100, MARKER_UM[1] + 50]]), 64.0, 32)[0]
    cx, cy = _marker_centre(patch)
    assert abs(cx - 15.5) < 0.6 and abs(cy - 15.5) < 0.6
    # 90 degree rotation: micron (x, y) = (-row * mpp + 1000, col * mpp)
    m = np.array([[0.0, -0.5, 1000.0], [0.5, 0.0, 0.0], [0, 0, 1]])
    set_transformation(el, Affine(m, input_axes=("x", "y"), output_axes=("x", "y")), to_coordinate_system="L")
    pyr = _image.image_pyramid(sdata, "L_he", "L")
    col, row = MARKER_UM[0] / 0.5, MARKER_UM[1] / 0.5
    where = m[:2, :2] @ np.array([col, row]) + m[:2, 2]
    for lv in pyr.levels:
        patch = _image.read_patches(pyr, where[None], 64.0, 32, level=lv)[0]
        cx, cy = _marker_centre(patch)
        assert abs(cx - 15.5) < 0.8 and abs(cy - 15.5) < 0.8, lv.index


def test_border_is_background_not_wrapped():
    img = np.zeros((400, 400, 3), np.uint8)
    img[:, :, 0] = 100  # dark red everywhere: padding must be white, and the far side must not appear
    img[:, -20:] = 0
    a = ad.AnnData(np.zeros((1, 1), np.float32))
    sdata = build_library(a, library="L", xy_um=np.array([[1.0, 1.0]]), diameter_um=10, image=img, mpp=1.0)
    pyr = _image.image_pyramid(sdata, "L_he", "L")
    patch = _image.read_patches(pyr, np.array([[0.0, 0.0]]), 40.0, 40)[0]
    assert (patch[:, :19, :] == 255).all() and (patch[:, :, :19] == 255).all()
    inside = patch[:, 21:, 21:]
    assert (inside[0] == 100).all() and (inside[1] == 0).all()
    far = _image.read_patches(pyr, np.array([[399.0, 200.0]]), 40.0, 40)[0]
    assert (far[:, :, 21:] == 255).all()  # right of the image: background, not the left edge


def test_single_scale_element_and_antialias():
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 300, 300), dtype=np.uint8)
    el = Image2DModel.parse(
        img, dims=("c", "y", "x"), transformations={"L": Scale([1.0, 1.0], axes=("y", "x"))}
    )
    pyr = _image.image_pyramid(SpatialData(images={"im": el}), "im", "L")
    assert len(pyr.levels) == 1
    # 100 um -> 10 px: each output pixel averages ~10 x 10 noise pixels, so the patch is smooth
    patch = _image.read_patches(pyr, np.array([[150.0, 150.0]]), 100.0, 10)[0].astype(float)
    assert patch.std() < 25 and abs(patch.mean() - 127.5) < 15


def test_chunkwise_reads_and_order_independence(monkeypatch):
    sdata = _sdata(shape=(1500, 1700))
    pyr = _image.image_pyramid(sdata, "L_he", "L")
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 800, (300, 2))
    sizes = []
    real = _image._read_region

    def spy(level, x0, y0, x1, y1):
        sizes.append((y1 - y0) * (x1 - x0))
        return real(level, x0, y0, x1, y1)

    monkeypatch.setattr(_image, "MAX_TILE_PX", 256)
    monkeypatch.setattr(_image, "_read_region", spy)
    full = _image.read_patches(pyr, xy, 20.0, 40, level=pyr.levels[0], num_workers=3)
    assert max(sizes) < 1500 * 1700 / 4  # never the whole image
    assert len(sizes) < len(xy) / 3  # many patches per read
    perm = rng.permutation(len(xy))
    again = _image.read_patches(pyr, xy[perm], 20.0, 40, level=pyr.levels[0], num_workers=1)
    np.testing.assert_array_equal(again, full[perm])


def test_bad_geometry_raises():
    sdata = _sdata()
    pyr = _image.image_pyramid(sdata, "L_he", "L")
    with pytest.raises(ValueError, match="below one pixel"):
        _image.check_patch_geometry(pyr, np.array([MARKER_UM]), 0.1)
    with pytest.raises(ValueError, match="larger than image"):
        _image.check_patch_geometry(pyr, np.array([MARKER_UM]), 5000.0)
    with pytest.raises(ValueError, match="off image"):
        _image.check_patch_geometry(pyr, np.array([[5000.0, 100.0]]), 50.0)
    with pytest.raises(ValueError, match="not registered to the coordinate system"):
        _image.image_pyramid(sdata, "L_he", "other")
    with pytest.raises(KeyError, match="No image element"):
        resolve(sdata, image_key="nope")


SCALES = (0.7, 1.0, 1.37, 2.0, 3.3)  # level pixels per output pixel


def _assert_close(a: np.ndarray, b: np.ndarray) -> None:
    """Within one grey level (float rounding at .5), and almost everywhere equal."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


@pytest.mark.parametrize("scale", SCALES)
def test_separable_sampling_matches_grid_sample(scale):
    rng = np.random.default_rng(int(scale * 100))
    region = rng.integers(0, 256, (3, 90, 110), dtype=np.uint8)
    out_px = 21
    t = (np.arange(out_px) + 0.5) / out_px - 0.5
    # centres anywhere, past the region's edges too (border rule); x and y pixel sizes differ; flipped axes
    centre = np.concatenate([rng.uniform(-15, 125, (40, 2)), [[0.0, 0.0], [109.0, 89.0], [-3.0, 95.0]]])
    for sx, sy in ((1.0, 1.0), (1.0, 1.6), (0.55, 1.0), (-1.0, 1.3), (1.0, -0.8)):
        step = np.diag([sx, sy]) * (scale * out_px)
        assert _image._axis_aligned(step)
        _assert_close(
            _image._sample_separable(region, centre, step, t), _image._sample_grid(region, centre, step, t)
        )


@pytest.mark.parametrize("scale", SCALES)
def test_separable_path_matches_grid_path_end_to_end(scale, monkeypatch):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    a = ad.AnnData(np.zeros((1, 1), np.float32))
    sdata = build_library(a, library="L", xy_um=np.array([[5.0, 5.0]]), diameter_um=10, image=img, mpp=0.5)
    el = sdata.images["L_he"]
    out_px = 24
    # anisotropic pixels (0.5 um wide, 0.8 um tall), then the same image flipped left-right
    flip = np.array([[-0.5, 0, 120.0], [0, 0.8, 0], [0, 0, 1]])
    transforms = (
        Scale([0.8, 0.5], axes=("y", "x")),
        Affine(flip, input_axes=("x", "y"), output_axes=("x", "y")),
    )
    calls, real = [], _image._sample_separable

    def spy(*args):
        calls.append(1)
        return real(*args)

    for transform in transforms:
        set_transformation(el, transform, to_coordinate_system="L")
        pyr = _image.image_pyramid(sdata, "L_he", "L")
        x0, x1, y0, y1 = pyr.extent_um
        # near and past the edges of the image, and its corners
        xy = np.concatenate([rng.uniform([x0 - 5, y0 - 5], [x1 + 5, y1 + 5], (60, 2)), [[x0, y0], [x1, y1]]])
        size_um = scale * out_px * 0.5
        calls.clear()
        monkeypatch.setattr(_image, "_sample_separable", spy)
        sep = _image.read_patches(pyr, xy, size_um, out_px, level=pyr.levels[0])
        assert calls  # the separable path was taken
        monkeypatch.undo()
        monkeypatch.setattr(_image, "_axis_aligned", lambda step: False)
        grid = _image.read_patches(pyr, xy, size_um, out_px, level=pyr.levels[0])
        monkeypatch.undo()
        _assert_close(sep, grid)


def test_box_average_matches_avg_pool():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    region = rng.integers(0, 256, (3, 47, 61), dtype=np.uint8)
    for k in (2, 3, 4, 6, 7):
        img = torch.from_numpy(region).float()[None]
        ph, pw = (-47) % k, (-61) % k
        img = F.pad(img, (0, pw, 0, ph), value=255.0)  # partial blocks average with background
        ref = F.avg_pool2d(img, k)[0].add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
        np.testing.assert_array_equal(_image._prepare(region, k + 0.5), ref)


def test_a_lazily_derived_level_is_computed_once_with_the_same_pixels():
    """A coarser level that spatialdata computes from the finest on every read is computed once (same pixels,
    same patches); the finest level and a level above the size cap are left as they are."""
    from unittest.mock import patch

    import dask.array as da
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    from nichekd._core.patches import computed_once, image_pyramid, level_arrays, read_patches

    rng = np.random.default_rng(0)
    img = da.from_array(rng.integers(0, 256, (3, 1024, 1024), dtype=np.uint8), chunks=(3, 256, 256))
    element = Image2DModel.parse(img, dims=("c", "y", "x"), scale_factors=[2, 2])
    sdata = sd.SpatialData(images={"he": element})
    pyr = image_pyramid(sdata, "he", "global")
    lv = pyr.levels[1]
    fast = computed_once(pyr, lv)
    assert isinstance(fast.data.data, np.ndarray)
    np.testing.assert_array_equal(fast.data.data, np.asarray(level_arrays(element)[1].data))
    assert computed_once(pyr, pyr.levels[0]) is pyr.levels[0]
    centres = rng.uniform(40, 980, (200, 2))
    np.testing.assert_array_equal(
        read_patches(pyr, centres, 64.0, 32, level=fast), read_patches(pyr, centres, 64.0, 32, level=lv)
    )
    with patch.object(_image, "MAX_COMPUTED_LEVEL_BYTES", 1000):
        assert computed_once(pyr, lv) is lv
