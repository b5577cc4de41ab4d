"""Images a user builds by hand get the readers' pixel rules (issue 21), and labels tables land on their pixels.

An image element made with ``spatialdata.models.Image2DModel.parse`` (or by another tool) is read by the one rule
of ``nichekd._core.image``: 16-bit and float values scaled alike on every tile (from the whole image), channels
taken by their names (BGR reordered, alpha dropped, fluorescence refused), NaN pixels read as white glass with a
warning; two-channel and blank images are named as such, not reported as "not registered". A table annotating a
labels element (a segmentation mask) takes each cell's position from the mask itself.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from spatialdata.models import Image2DModel, Labels2DModel, TableModel
from spatialdata.transformations import Scale

import nichekd as nk
from nichekd._core import patches as _image
from nichekd._core.spatial import resolve
from nichekd.io._build import build_library
from nichekd.pp._tissue import tissue_mask

MPP = 0.5
LIB = "L"
SHAPE = (600, 640)  # (y, x) pixels: 300 x 320 um
CENTRES = np.array([[60.0, 60.0], [160.0, 100.0], [250.0, 230.0], [100.0, 200.0], [200.0, 50.0]])


def _he_uint8(seed: int = 0) -> np.ndarray:
    """``(3, y, x)`` uint8 H&E-like texture (pink background, purple blobs)."""
    rng = np.random.default_rng(seed)
    img = np.empty((3, *SHAPE), np.uint8)
    base = np.array([225, 150, 190])[:, None, None]
    img[:] = np.clip(base + rng.normal(0, 18, (3, *SHAPE)), 0, 255).astype(np.uint8)
    blobs = rng.random(SHAPE) < 0.05
    img[:, blobs] = np.array([90, 60, 150], np.uint8)[:, None]
    return img


def _element(arr: np.ndarray, c_coords=None, chunks: int = 128, scale_factors=None, mpp: float = MPP):
    """A hand-made image element registered in microns (single-scale by default: the levels spatialdata
    computes from 16-bit or float pixels differ from those of 8-bit ones by their rounding)."""
    return Image2DModel.parse(
        arr,
        dims=("c", "y", "x"),
        c_coords=c_coords,
        transformations={LIB: Scale([mpp, mpp], axes=("y", "x"))},
        scale_factors=scale_factors,
        chunks=(arr.shape[0], chunks, chunks),
    )


def _object(images: dict) -> sd.SpatialData:
    """Spots at ``CENTRES`` (microns) in nichekd's layout, with hand-made image elements instead of the reader's."""
    a = ad.AnnData(np.ones((len(CENTRES), 3), np.float32))
    base = build_library(a, library=LIB, xy_um=CENTRES, diameter_um=20.0)
    return sd.SpatialData(images=images, shapes=dict(base.shapes), tables=dict(base.tables))


def _features(sdata, **kwargs) -> np.ndarray:
    out = nk.pp.histology_features(sdata, backbone="stain", copy=True, **kwargs)
    return np.asarray(out.obsm["X_stain"])


def _snapshot(sdata) -> tuple:
    t = sdata.tables["table"]
    return sorted(sdata.images), sorted(sdata.shapes), sorted(t.obsm), sorted(t.uns), sorted(t.obs.columns)


@pytest.fixture(scope="module")
def reference():
    """Features of the uint8 RGB image with unnamed channels (spatialdata's default c coordinates 0, 1, 2)."""
    img = _he_uint8()
    return img, _features(_object({"he": _element(img)}))


# ---------------------------------------------------------------------------------------------------------------
# 1. bit depth: one rule for the whole image


def test_default_channel_names_keep_rgb_order(reference):
    img, ref = reference
    assert [str(c) for c in _element(img).coords["c"].values] == ["0", "1", "2"]
    np.testing.assert_array_equal(_features(_object({"he": _element(img, ["r", "g", "b"])})), ref)


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (lambda u: u.astype(np.uint16) * np.uint16(257), "x * 255 / 65535"),  # full-range 16-bit
        (lambda u: u.astype(np.float32) / np.float32(255.0), "in [0, 1]: x * 255"),
        (lambda u: u.astype(np.float64), "in [0, 255]: kept"),
    ],
    ids=["uint16", "float01", "float255"],
)
def test_16bit_and_float_images_read_like_their_8bit_original(reference, make, rule):
    img, ref = reference
    sdata = _object({"he": _element(make(img))})
    with pytest.warns(UserWarning, match="not uint8: every tile is read with one rule"):
        got = _features(sdata)
    np.testing.assert_array_equal(got, ref)  # 16-bit was clipped to white; floats in [0, 1] were truncated
    with pytest.warns(UserWarning, match=rule.replace("[", r"\[").replace("*", r"\*")):
        pyr = resolve(sdata).pyramid(LIB)
    assert rule in pyr.pixel_rule.rule
    assert pyr.pixel_rule is pyr.pixel_rule  # worked out once per image, kept on the pyramid


def _twelve_bit(u: np.ndarray, bits: int = 12) -> np.ndarray:
    """8-bit values as a ``bits``-bit scanner stores them in a 16-bit file (reads back to ``u`` exactly)."""
    return np.round(u.astype(np.float64) * ((2**bits - 1) / 255)).astype(np.uint16)


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (lambda u: _twelve_bit(u, 12), "as 12-bit data (values up to 4095): x * 255 / 4095"),
        (lambda u: _twelve_bit(u, 10), "as 10-bit data (values up to 1023): x * 255 / 1023"),
        (lambda u: _twelve_bit(u, 14), "as 14-bit data (values up to 16383): x * 255 / 16383"),
        (lambda u: u.astype(np.int32), "int32 scaled by its range as 8-bit data (values up to 255)"),
        (lambda u: u.astype(np.int64), "int64 scaled by its range as 8-bit data (values up to 255)"),
        (lambda u: u.astype(np.uint16), "uint16 scaled by its range as 8-bit data (values up to 255)"),
    ],
    ids=["uint16-12bit", "uint16-10bit", "uint16-14bit", "int32-8bit", "int64-8bit", "uint16-8bit"],
)
def test_integer_images_are_read_by_the_range_of_their_data(reference, make, rule):
    """12-bit data in a uint16 file, or 0-255 values in an int32 image, were scaled by the dtype's full range
    (x * 255 / 65535): the image read nearly black and every cell landed in one niche."""
    img, ref = reference
    sdata = _object({"he": _element(make(img))})
    pattern = rule.replace("[", r"\[").replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")
    with pytest.warns(UserWarning, match=pattern) as seen:
        nk.pp.histology_features(sdata, backbone="stain")
    assert sum("not uint8" in str(w.message) for w in seen) == 1  # one warning for the image
    table = sdata.tables["table"]
    np.testing.assert_array_equal(table.obsm["X_stain"], ref)
    assert rule in table.uns["X_stain"]["params"]["pixel_rule"][LIB]  # the rule is recorded with the features


def test_integer_rule_keeps_full_range_16bit_and_uint8_as_they_were():
    from nichekd._core.image import as_rgb_cyx, to_uint8

    u8 = _he_uint8()
    out, rule = to_uint8(u8)
    assert out is u8 and rule == "uint8 kept"  # nichekd's own readers' uint8 images: untouched, not copied
    assert as_rgb_cyx(u8) is u8
    full = u8.astype(np.uint16) * np.uint16(257)
    out, rule = to_uint8(full, spatial_axes=(1, 2))
    assert rule.endswith("x * 255 / 65535") and "16-bit" in rule
    np.testing.assert_array_equal(out, u8)
    # one rule for a pyramid: a coarse level gives the sample, and the whole image is scaled by it
    out, rule = to_uint8(_twelve_bit(u8), spatial_axes=(1, 2), sample_from=_twelve_bit(u8)[:, ::4, ::4])
    assert "12-bit" in rule
    np.testing.assert_array_equal(out, u8)


def test_float_rule_comes_from_the_whole_image_not_each_tile(monkeypatch):
    """A float [0, 255] image with a near-black region (values <= 1): that region's tiles must stay black (the
    old per-tile rule took them for [0, 1] and multiplied them by 255)."""
    img = np.full((3, *SHAPE), 230.0, np.float32)
    img[:, 300:, 320:] = 0.8  # ink, 150 x 160 um in the lower right
    sdata = _object({"he": _element(img, ["r", "g", "b"], chunks=64)})
    monkeypatch.setattr(_image, "MAX_TILE_PX", 64)
    with pytest.warns(UserWarning, match="float32 in \\[0, 255\\]"):
        pyr = resolve(sdata).pyramid(LIB)
        dark = _image.read_patches(
            pyr, np.array([[230.0, 220.0], [240.0, 230.0]]), 8.0, 16, level=pyr.levels[0]
        )
        light = _image.read_patches(pyr, np.array([[50.0, 50.0]]), 8.0, 16, level=pyr.levels[0])
    assert int(dark.max()) <= 1 and int(light.min()) == 230


def test_float_image_of_unknown_range_is_refused_before_any_work(reference):
    img, _ = reference
    sdata = _object({"he": _element(img.astype(np.float32) * 20.0)})  # 0..5100: neither [0, 1] nor [0, 255]
    before = _snapshot(sdata)
    with pytest.raises(ValueError, match=r"range is unknown.*Rescale it to uint8"):
        nk.pp.histology_features(sdata, backbone="stain")
    assert _snapshot(sdata) == before


# ---------------------------------------------------------------------------------------------------------------
# 2. channel names


def test_bgr_named_image_is_reordered_to_rgb(reference):
    img, ref = reference
    bgr = _element(img[::-1].copy(), ["b", "g", "r"])
    np.testing.assert_array_equal(_features(_object({"he": bgr})), ref)
    upper = _element(img[[1, 2, 0]].copy(), ["Green", "Blue", "Red"])
    np.testing.assert_array_equal(_features(_object({"he": upper})), ref)


def test_rgba_named_image_drops_alpha(reference):
    img, ref = reference
    rgba = np.concatenate([img, np.zeros((1, *SHAPE), np.uint8)])  # a transparent alpha must not matter
    np.testing.assert_array_equal(_features(_object({"he": _element(rgba, ["r", "g", "b", "a"])})), ref)
    argb = np.concatenate([np.full((1, *SHAPE), 255, np.uint16), img.astype(np.uint16) * np.uint16(257)])
    with pytest.warns(UserWarning, match="65535"):
        got = _features(_object({"he": _element(argb, ["A", "R", "G", "B"])}))
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("names", [["DAPI", "CD45", "CD3"], ["r", "g", "b", "DAPI"]])
def test_fluorescence_channels_are_refused_as_not_he(reference, names):
    img, _ = reference
    arr = np.concatenate([img] * 2)[: len(names)]
    sdata = _object({"if": _element(arr, names)})
    before = _snapshot(sdata)
    # chosen automatically: the only image is skipped and named, with its channels
    with pytest.raises(ValueError, match=r"no usable H&E image.*DAPI.*fluorescence.*not H&E.*image_key="):
        nk.pp.histology_features(sdata, backbone="stain")
    # passed explicitly: refused with the same reason
    with pytest.raises(ValueError, match=r"'if' has channels .*DAPI.*not H&E.*image_key="):
        nk.pp.histology_features(sdata, backbone="stain", image_key="if")
    assert _snapshot(sdata) == before
    # beside an H&E image the fluorescence one is skipped, whatever its resolution
    both = _object({"if": _element(arr, names), "he": _element(img[:, ::2, ::2].copy(), mpp=2 * MPP)})
    assert resolve(both).library(LIB).image == "he"


@pytest.mark.parametrize("name", ["gray", "grey", "L", "luminance", "brightfield", "intensity", "0"])
def test_one_channel_of_any_name_is_grayscale(reference, name):
    """A one-channel image named e.g. 'gray' or 'brightfield' was called a fluorescence or multiplex image."""
    img, _ = reference
    grey = img.mean(0, keepdims=True).astype(np.uint8)
    with pytest.warns(UserWarning, match="grayscale"):
        expected = _features(_object({"he": _element(grey)}), image_key="he")
    sdata = _object({"he": _element(grey, None if name == "0" else [name])})
    before = _snapshot(sdata)
    # not chosen automatically (a one-channel image is often a fluorescence scan), but named as grayscale
    with pytest.raises(ValueError, match=r"1 channel.*grayscale.*image_key=") as err:
        nk.pp.histology_features(sdata, backbone="stain")
    assert "fluorescence" not in str(err.value)
    with pytest.raises(ValueError, match=r"1 channel.*grayscale") as err:
        tissue_mask(sdata)
    assert "fluorescence" not in str(err.value)
    assert _snapshot(sdata) == before
    # passed as image_key=: read as grayscale, with the grayscale warning
    with pytest.warns(UserWarning, match="'he' is grayscale: read as RGB by repeating the channel"):
        got = _features(sdata, image_key="he")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["DAPI", "Hoechst 33342", "CD45", "AF488"])
def test_one_fluorescence_channel_is_still_refused(reference, name):
    img, _ = reference
    sdata = _object({"he": _element(img[2:].copy(), [name])})
    before = _snapshot(sdata)
    for kwargs in ({}, {"image_key": "he"}):
        with pytest.raises(ValueError, match=r"fluorescence or multiplex image, not H&E.*image_key="):
            nk.pp.histology_features(sdata, backbone="stain", **kwargs)
    assert _snapshot(sdata) == before


def test_bool_image_says_what_to_do(reference):
    img, _ = reference
    sdata = _object({"he": _element(img > 128)})
    before = _snapshot(sdata)
    for call in (
        lambda: nk.pp.histology_features(sdata, backbone="stain"),
        lambda: nk.pp.histology_features(sdata, backbone="stain", image_key="he"),
        lambda: tissue_mask(sdata),
    ):
        with pytest.raises(ValueError, match=r"binary mask \(bool\).*cannot be converted.*Pass image_key="):
            call()
    assert _snapshot(sdata) == before
    from nichekd._core.image import as_rgb_cyx

    with pytest.raises(ValueError, match=r"binary mask.*cannot be converted.*Pass image_key="):
        as_rgb_cyx(img > 128)


# ---------------------------------------------------------------------------------------------------------------
# 3. NaN pixels: background (white glass), with a warning naming the image and the share


def test_nan_pixels_read_as_background_with_a_warning(reference):
    img, _ = reference
    arr = img.astype(np.float32) / np.float32(255.0)
    arr[:, :100, :] = np.nan  # scanner padding over the top 50 um
    arr[0, 500, 600] = np.inf
    sdata = _object({"he": _element(arr, ["r", "g", "b"])})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pyr = resolve(sdata).pyramid(LIB)
        patch = _image.read_patches(pyr, np.array([[80.0, 10.0]]), 16.0, 32, level=pyr.levels[0])[0]
    messages = [str(w.message) for w in seen]
    assert any("'he'" in m and "NaN or infinite" in m and "%" in m and "background" in m for m in messages)
    assert not any("invalid value" in m for m in messages)
    assert (patch[:, :8] == 255).all()  # the padded rows are white, not black
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        feats = _features(sdata)
    assert sum("NaN or infinite" in str(w.message) for w in seen) == 1
    assert np.isfinite(feats).all()


# ---------------------------------------------------------------------------------------------------------------
# 4. two channels, blank images: named as such, by both resolvers


def test_two_channel_and_blank_images_are_named_not_called_unregistered(reference):
    img, _ = reference
    for images, reason in [
        ({"he": _element(img[:2].copy())}, r"'he' has 2 channels; H&E needs 3 \(RGB\)"),
        (
            {"he": _element(np.zeros((3, *SHAPE), np.uint8))},
            r"'he' is blank \(constant pixels\): a placeholder",
        ),
    ]:
        sdata = _object(images)
        before = _snapshot(sdata)
        with pytest.raises(ValueError, match=reason) as err:
            nk.pp.histology_features(sdata, backbone="stain")
        assert "not registered" not in str(err.value) and "image_key=" in str(err.value)
        with pytest.raises(ValueError, match=reason):
            nk.pp.histology_features(sdata, backbone="stain", image_key="he")
        with pytest.raises(ValueError, match=reason):
            tissue_mask(sdata)
        with pytest.raises(ValueError, match=reason):
            tissue_mask(sdata, image_key="he", library=LIB)
        assert _snapshot(sdata) == before and "nichekd" not in sdata.attrs


def test_tissue_mask_uses_the_one_image_resolver(reference):
    """No ``{library}_he`` naming is needed: the H&E image is found beside a blank thumbnail, and a 16-bit scan
    is read by the same pixel rule as the features."""
    img, _ = reference
    sdata = _object({"scan": _element(img), "thumb": _element(np.zeros((3, 64, 64), np.uint8))})
    plain = tissue_mask(sdata, library=LIB, copy=True, target_mpp=2.0, min_area_um2=100.0)
    assert plain is not None and len(plain) >= 1
    deep = _object({"scan": _element(img.astype(np.uint16) * np.uint16(257))})
    with pytest.warns(UserWarning, match="65535"):
        again = tissue_mask(deep, copy=True, target_mpp=2.0, min_area_um2=100.0)
    np.testing.assert_allclose(again.geometry.area.sum(), plain.geometry.area.sum())


# ---------------------------------------------------------------------------------------------------------------
# 5. a table annotating a labels element (segmentation mask): positions from the mask, at full scale

BLOBS_PX = {1: (100, 80), 2: (300, 200), 7: (500, 320), 12: (220, 400)}  # label -> (col, row) of its centre


def _labels_object():
    """A mask with square blobs at known pixels (multiscale, so a downscaled level exists), an image with a black
    marker on each blob, both scaled to microns (0.5 um/px); the table annotates the mask."""
    h, w = 480, 640
    mask = np.zeros((h, w), np.int32)
    image = np.full((3, h, w), 225, np.uint8)
    image[1] = 160
    for label, (col, row) in BLOBS_PX.items():
        mask[row - 6 : row + 7, col - 6 : col + 7] = (
            label  # centre of pixel (col, row): (col + 0.5, row + 0.5)
        )
        image[:, row - 3 : row + 4, col - 3 : col + 4] = 0
    to_um = {"global": Scale([MPP, MPP], axes=("y", "x"))}
    labels = Labels2DModel.parse(mask, dims=("y", "x"), transformations=to_um, scale_factors=[2, 2])
    he = Image2DModel.parse(image, dims=("c", "y", "x"), transformations=to_um, scale_factors=[2])
    ids = [12, 1, 7, 2]  # not in the mask's order
    obs = pd.DataFrame(
        {"region": pd.Categorical(["cells"] * len(ids)), "cell_id": ids}, index=[f"c{i}" for i in ids]
    )
    table = TableModel.parse(
        ad.AnnData(np.ones((len(ids), 3), np.float32), obs=obs),
        region="cells",
        region_key="region",
        instance_key="cell_id",
    )
    return sd.SpatialData(images={"he": he}, labels={"cells": labels}, tables={"table": table}), ids


def _expected_um(ids) -> np.ndarray:
    return np.array([[(BLOBS_PX[i][0] + 0.5) * MPP, (BLOBS_PX[i][1] + 0.5) * MPP] for i in ids])


def test_labels_table_positions_come_from_the_mask_at_full_scale():
    sdata, ids = _labels_object()
    before = _snapshot(sdata)
    with pytest.raises(ValueError, match=r"Cannot tell the units.*'global'.*set_units"):
        nk.pp.histology_features(sdata, backbone="stain")
    assert _snapshot(sdata) == before
    nk.pp.set_units(sdata, microns_per_unit=1.0)  # the message's advice, literally: 'global' is in microns
    ctx = resolve(sdata)
    lib = ctx.library("cells")
    assert lib.coordinate_system == "global" and lib.image == "he" and lib.microns_per_unit == 1.0
    np.testing.assert_allclose(ctx.xy_um, _expected_um(ids), atol=1e-9)
    # each patch is centred on its blob's marker (a coarse level and the full one agree)
    pyr = ctx.pyramid("cells")
    for level in pyr.levels:
        patches = _image.read_patches(pyr, ctx.xy_um, 16.0, 16, level=level)
        for patch in patches:
            ys, xs = np.nonzero(patch.max(0) < 100)
            assert abs(xs.mean() - 7.5) < 0.6 and abs(ys.mean() - 7.5) < 0.6, level.index
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=16.0)
    assert np.isfinite(sdata.tables["table"].obsm["X_stain"]).all()


def test_labels_table_coordinates_in_other_units_pass_stale_ones_are_refused():
    sdata, ids = _labels_object()
    nk.pp.set_units(sdata, microns_per_unit=1.0)
    t = sdata.tables["table"]
    # the old advice (obsm['spatial'] in microns) and pixel-index centroids (regionprops) agree with the mask
    for xy in (_expected_um(ids), _expected_um(ids) / MPP - 0.5):
        t.obsm["spatial"] = xy
        np.testing.assert_allclose(resolve(sdata).xy_um, _expected_um(ids), atol=1e-9)
    # coordinates of another segmentation (rows shuffled) are refused, naming the fix
    t.obsm["spatial"] = _expected_um(ids)[[1, 0, 3, 2]]
    before = _snapshot(sdata)
    with pytest.raises(ValueError, match=r"disagrees with the centroids of its element 'cells'.*delete it"):
        nk.pp.histology_features(sdata, backbone="stain")
    assert _snapshot(sdata) == before
    # a cell the mask does not hold
    del t.obsm["spatial"]
    t.obs["cell_id"] = [12, 1, 7, 99]
    with pytest.raises(ValueError, match=r"1 observations .* no label in the mask 'cells'.*99"):
        resolve(sdata)


# ---------------------------------------------------------------------------------------------------------------
# 6. an object read lazily from a store that was deleted since


def test_pixels_of_a_deleted_store_are_named_not_called_blank(reference, tmp_path):
    """``read_zarr``, then the store deleted: zarr reads the missing chunks as zeros, and the image was reported
    as "blank (constant pixels): a placeholder"."""
    import shutil

    img, _ = reference
    store = tmp_path / "a.zarr"
    _object({"he": _element(img)}).write(store)
    lazy = sd.read_zarr(store)
    shutil.rmtree(store)
    before = _snapshot(lazy)
    pattern = (
        r"image 'he' is read lazily from files that no longer exist \(.*a\.zarr.*Read or build the object"
    )
    for call in (
        lambda: nk.pp.histology_features(lazy, backbone="stain"),
        lambda: nk.pp.histology_features(lazy, backbone="stain", image_key="he"),
        lambda: tissue_mask(lazy),
        lambda: resolve(lazy).pyramid(LIB),
    ):
        with pytest.raises(FileNotFoundError, match=pattern) as err:
            call()
        assert "blank" not in str(err.value).split("(zarr")[0]
    assert _snapshot(lazy) == before and list(tmp_path.iterdir()) == []
    # a pyramid built before the deletion names the files when its pixels are first read
    _object({"he": _element(img)}).write(store)
    lazy = sd.read_zarr(store)
    pyr = _image.image_pyramid(lazy, "he", LIB)
    shutil.rmtree(store)
    with pytest.raises(FileNotFoundError, match=pattern):
        _image.read_patches(pyr, CENTRES, 16.0, 16)


def test_labels_of_a_deleted_store_are_named(tmp_path):
    import shutil

    sdata, _ = _labels_object()
    nk.pp.set_units(sdata, microns_per_unit=1.0)
    sdata.write(tmp_path / "m.zarr")
    lazy = sd.read_zarr(tmp_path / "m.zarr")
    shutil.rmtree(tmp_path / "m.zarr")
    with pytest.raises(
        FileNotFoundError, match=r"labels element 'cells' is read lazily from files that no longer"
    ):
        resolve(lazy, images=False)
