"""Whole-slide reading: pyramidal TIFF / OME-TIFF / SVS-like files written here with tifffile, read lazily."""

from __future__ import annotations

import tracemalloc
import warnings

import dask.array as da
import numpy as np
import pytest
import tifffile
from spatialdata.transformations import get_transformation

import nichekd as nk
from nichekd._core.keys import image_name
from nichekd._core.patches import image_pyramid, read_patches
from nichekd.io._wsi import read_wsi

TILE = 128
SVS_DESC = "Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({t}x{t}) RAW|AppMag = 40|MPP = 0.2500|Filename = x"


def _levels(shape=(960, 1440), downsamples=(1, 2, 4), seed=0):
    """A textured RGB base and its levels (every d-th pixel: level pixel i covers base pixels [d*i, d*i + d))."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[::d, ::d]) for d in downsamples]


def write_pyramid(path, levels, *, layout="subifds", resolution=None, ome_mpp=None, svs_mpp=None):
    """Write levels as real scanners do: SubIFDs (OME/BigTIFF), reduced pages (generic) or SVS pages."""
    common = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "zlib"}
    first = dict(common)
    if resolution is not None:
        first.update(resolution=resolution[:2], resolutionunit=resolution[2])
    metadata = None
    if ome_mpp is not None:
        metadata = {"axes": "YXS", "PhysicalSizeX": ome_mpp, "PhysicalSizeY": ome_mpp}
        metadata.update(PhysicalSizeXUnit="nm", PhysicalSizeYUnit="nm") if ome_mpp > 10 else None
    h, w = levels[0].shape[:2]
    with tifffile.TiffWriter(path, bigtiff=layout == "subifds", ome=ome_mpp is not None) as tw:
        if layout == "subifds":
            tw.write(levels[0], subifds=len(levels) - 1, metadata=metadata, **first)
            for lv in levels[1:]:
                tw.write(lv, subfiletype=1, **common)
        elif layout == "pages":
            tw.write(levels[0], metadata=None, **first)
            for lv in levels[1:]:
                tw.write(lv, subfiletype=1, metadata=None, **common)
        elif layout == "svs":
            desc = SVS_DESC.format(w=w, h=h, t=TILE)
            if svs_mpp is None:
                desc = desc.replace("|MPP = 0.2500", "")
            tw.write(levels[0], description=desc, metadata=None, **first)
            thumb = levels[-1][::2, ::2]
            tw.write(
                thumb,
                description="Aperio Image Library v12.0.15\r\nthumbnail",
                photometric="rgb",
                metadata=None,
            )
            for lv in levels[1:]:
                tw.write(lv, description="Aperio Image Library v12.0.15\r\nlevel", metadata=None, **common)
            label = np.full((64, 96, 3), 200, np.uint8)
            tw.write(label, subfiletype=1, description="Aperio Image Library\r\nlabel", photometric="rgb")
            tw.write(label, subfiletype=9, description="Aperio Image Library\r\nmacro", photometric="rgb")
    return path


def _cut(sdata, library, level, x_um, y_um, size):
    """Pixels of scale ``level`` whose top-left corner lies at micron (x, y), found through the transform."""
    tree = sdata.images[image_name(library)]
    arr = tree[f"scale{level}"]["image"]
    to_um = get_transformation(arr, to_coordinate_system=library).to_affine_matrix(("x", "y"), ("x", "y"))
    col, row = np.floor(np.linalg.inv(to_um) @ [x_um, y_um, 1.0])[:2].astype(int)
    return arr.data[:, row : row + size, col : col + size].compute().transpose(1, 2, 0)


@pytest.fixture(scope="module")
def levels():
    return _levels()


@pytest.mark.parametrize(
    ("layout", "kwargs", "mpp"),
    [
        ("subifds", {"ome_mpp": 0.5}, 0.5),  # OME-TIFF, physical size in um
        ("subifds", {"ome_mpp": 500.0}, 0.5),  # OME-TIFF, physical size in nm
        ("svs", {"svs_mpp": 0.25}, 0.25),  # Aperio MPP in the ImageDescription
        ("pages", {"resolution": (40_000, 40_000, "CENTIMETER")}, 0.25),  # TIFF resolution per cm
        ("pages", {"resolution": (50_800, 50_800, "INCH")}, 0.5),  # per inch
    ],
)
def test_formats_mpp_levels_and_patches(tmp_path, levels, layout, kwargs, mpp):
    suffix = {"svs": ".svs", "subifds": ".ome.tif"}.get(layout, ".tif")
    path = write_pyramid(tmp_path / f"slide{suffix}", levels, layout=layout, **kwargs)
    sdata = read_wsi(path)
    assert list(sdata.images) == ["slide_he"]
    tree = sdata.images["slide_he"]
    assert list(tree.keys()) == ["scale0", "scale1", "scale2"]  # the file's levels, not recomputed
    t = get_transformation(tree, to_coordinate_system="slide")
    np.testing.assert_allclose(t.to_affine_matrix(("x", "y"), ("x", "y"))[[0, 1], [0, 1]], [mpp, mpp])
    for k, lv in enumerate(levels):
        img = tree[f"scale{k}"]["image"]
        assert img.dims == ("c", "y", "x") and img.dtype == np.uint8 and img.shape == (3, *lv.shape[:2])
        assert isinstance(img.data, da.Array)  # lazy, chunk borders on tile borders
        assert all((np.cumsum(ch)[:-1] % TILE == 0).all() for ch in img.data.chunks[1:])
        d = 2**k
        for x_um, y_um in [(0.0, 0.0), (311.3, 97.9), (1440 * mpp - 40 * mpp * d, 960 * mpp - 33 * mpp * d)]:
            got = _cut(sdata, "slide", k, x_um, y_um, 16)
            r, c = int(y_um // (mpp * d)), int(x_um // (mpp * d))
            np.testing.assert_array_equal(got, lv[r : r + 16, c : c + 16])
    info = sdata.attrs["nichekd"]["wsi"]["slide"]
    assert info["level_downsamples"] == [1.0, 2.0, 4.0] and info["mpp"] == [mpp, mpp]


def test_patch_extraction_reads_the_right_level(tmp_path, levels):
    """nichekd._core.patches at a micron position match the source pixels of the level they come from."""
    sdata = read_wsi(write_pyramid(tmp_path / "s.ome.tif", levels, ome_mpp=0.5))
    pyramid = image_pyramid(sdata, "s_he", "s")
    assert [lv.mpp for lv in pyramid.levels] == [0.5, 1.0, 2.0]
    for k, lv in enumerate(levels):
        mpp = 0.5 * 2**k
        # 32 output px at this level's resolution: the patch's corner sits on a pixel corner
        x0, y0 = 100 * mpp, 60 * mpp
        centre = np.array([[x0 + 16 * mpp, y0 + 16 * mpp]])
        patch = read_patches(pyramid, centre, 32 * mpp, 32, level=pyramid.levels[k])[0]
        np.testing.assert_array_equal(patch.transpose(1, 2, 0), lv[60:92, 100:132])  # patches are (c, y, x)


def test_non_power_of_two_levels(tmp_path):
    """Downsample 3 and 6 (and a base that does not divide): the transform is the level's shape ratio."""
    lv = _levels(shape=(900, 1350), downsamples=(1, 3, 6))
    sdata = read_wsi(write_pyramid(tmp_path / "odd.tif", lv, layout="pages"), mpp=0.5)
    tree = sdata.images["odd_he"]
    for k, d in enumerate((1, 3, 6)):
        arr = tree[f"scale{k}"]["image"]
        a = get_transformation(arr, to_coordinate_system="odd").to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(np.diag(a)[:2], [0.5 * 1350 / lv[k].shape[1], 0.5 * 900 / lv[k].shape[0]])
        np.testing.assert_allclose(np.diag(a)[:2], 0.5 * d, rtol=0.01)
        r, c = int(75.0 // (0.5 * d)), int(150.0 // (0.5 * d))
        np.testing.assert_array_equal(_cut(sdata, "odd", k, 150.0, 75.0, 8), lv[k][r : r + 8, c : c + 8])
    # a base that does not divide by the downsample: ceil(1001 / 4) = 251 pixels, ratio 3.988
    lv2 = [_levels(shape=(1001, 1001))[0]]
    lv2.append(lv2[0][::4, ::4])
    sdata2 = read_wsi(write_pyramid(tmp_path / "ceil.tif", lv2, layout="pages"), mpp=0.25)
    a = get_transformation(sdata2.images["ceil_he"]["scale1"]["image"], to_coordinate_system="ceil")
    np.testing.assert_allclose(a.to_affine_matrix(("x", "y"), ("x", "y"))[0, 0], 0.25 * 1001 / 251)


def test_level_option_drops_finer_levels(tmp_path, levels):
    sdata = read_wsi(write_pyramid(tmp_path / "l.ome.tif", levels, ome_mpp=0.25), level=1)
    tree = sdata.images["l_he"]
    assert list(tree.keys()) == ["scale0", "scale1"] and tree["scale0"]["image"].shape == (3, 480, 720)
    t = get_transformation(tree, to_coordinate_system="l").to_affine_matrix(("x", "y"), ("x", "y"))
    assert t[0, 0] == pytest.approx(0.5)
    np.testing.assert_array_equal(_cut(sdata, "l", 0, 50.0, 20.0, 8), levels[1][40:48, 100:108])
    with pytest.raises(ValueError, match="level=5"):
        read_wsi(tmp_path / "l.ome.tif", level=5)


def test_mpp_missing_override_and_implausible(tmp_path, levels):
    path = write_pyramid(tmp_path / "nores.tif", levels, layout="pages")
    with pytest.raises(ValueError, match="mpp="):
        read_wsi(path)
    sdata = read_wsi(path, mpp=0.3, library_id="p1")
    assert list(sdata.images) == ["p1_he"] and "p1" in sdata.coordinate_systems
    # mpp= overrides the file's metadata
    svs = write_pyramid(tmp_path / "a.svs", levels, layout="svs", svs_mpp=0.25)
    t = get_transformation(read_wsi(svs, mpp=0.5).images["a_he"], to_coordinate_system="a")
    assert t.to_affine_matrix(("x", "y"), ("x", "y"))[0, 0] == 0.5
    with pytest.raises(ValueError, match="mpp="):  # an SVS without MPP
        read_wsi(write_pyramid(tmp_path / "b.svs", levels, layout="svs"))
    # 72 dpi is an editor's default, not a scan scale
    with pytest.raises(ValueError, match="not a scan scale"):
        read_wsi(write_pyramid(tmp_path / "dpi.tif", levels, layout="pages", resolution=(72, 72, "INCH")))
    for bad in (0, -1, float("nan"), 500.0):
        with pytest.raises(ValueError, match="Microns per pixel"):
            read_wsi(path, mpp=bad)


def test_written_store_round_trips(tmp_path, levels):
    from spatialdata import read_zarr

    sdata = read_wsi(write_pyramid(tmp_path / "rt.ome.tif", levels[:2], ome_mpp=0.5))
    sdata.write(tmp_path / "rt.zarr")
    back = read_zarr(tmp_path / "rt.zarr")
    tree = back.images["rt_he"]
    assert [tree[k]["image"].shape for k in tree] == [(3, 960, 1440), (3, 480, 720)]
    np.testing.assert_array_equal(tree["scale1"]["image"].values.transpose(1, 2, 0), levels[1])


def _constant_tiles(n_tiles, tile):
    block = np.empty((tile, tile, 3), np.uint8)
    block[..., 0], block[..., 1], block[..., 2] = 225, 160, 200
    for _ in range(n_tiles):
        yield block


def test_large_pyramid_opens_lazily(tmp_path):
    """A 20,000 x 20,000 slide (1.2 GB of pixels) opens without decoding it: memory stays far below its size."""
    n, tile = 20_000, 512
    path = tmp_path / "big.tif"
    sizes = [n, n // 4, n // 16]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, m in enumerate(sizes):
            count = (-(-m // tile)) ** 2
            extra = {
                "subifds": len(sizes) - 1,
                "resolution": (40_000, 40_000),
                "resolutionunit": "CENTIMETER",
            }
            tw.write(
                _constant_tiles(count, tile), shape=(m, m, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression="zlib", compressionargs={"level": 1}, **(extra if i == 0 else {"subfiletype": 1}),
            )  # fmt: skip
    assert path.stat().st_size < 50e6
    tracemalloc.start()
    try:
        sdata = read_wsi(path)
        image = sdata.images["big_he"]["scale0"]["image"]
        patch = image.data[:, 12_345:12_601, 7_000:7_256].compute()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.shape == (3, n, n) and image.data.npartitions < 2_000
    np.testing.assert_array_equal(patch[:, 0, 0], [225, 160, 200])
    assert peak < 100e6, peak  # the full-resolution level is 1.2e9 bytes


def test_no_pyramid_warns_and_builds_lazy_levels(tmp_path):
    img = np.full((10_240, 300, 3), 230, np.uint8)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib")
    with pytest.warns(UserWarning, match="no pyramid.*vips tiffsave"):
        sdata = read_wsi(path, mpp=0.5)
    tree = sdata.images["flat_he"]
    assert len(tree) > 3 and tree["scale1"]["image"].shape == (3, 5_120, 150)
    assert sdata.attrs["nichekd"]["wsi"]["flat"]["file_pyramid"] is False
    np.testing.assert_array_equal(tree["scale2"]["image"][:, :4, :4].values, 230)
    # a small single-level image gets levels without a warning
    tifffile.imwrite(tmp_path / "small.tif", img[:1000], tile=(256, 256), photometric="rgb")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        small = read_wsi(tmp_path / "small.tif", mpp=0.5)
    assert len(small.images["small_he"]) >= 2


def test_jpeg_png(tmp_path, levels):
    from PIL import Image

    Image.fromarray(levels[1]).save(tmp_path / "he.png", dpi=(50_800, 50_800))  # 0.5 um/px
    sdata = read_wsi(tmp_path / "he.png")
    t = get_transformation(sdata.images["he_he"], to_coordinate_system="he")
    assert t.to_affine_matrix(("x", "y"), ("x", "y"))[0, 0] == pytest.approx(0.5, rel=1e-3)
    np.testing.assert_array_equal(
        sdata.images["he_he"]["scale0"]["image"].values.transpose(1, 2, 0), levels[1]
    )
    Image.fromarray(levels[1]).save(tmp_path / "he.jpg", quality=95)  # JPEG default 72 dpi / none
    with pytest.raises(ValueError, match="mpp="):
        read_wsi(tmp_path / "he.jpg")
    assert read_wsi(tmp_path / "he.jpg", mpp=1.0).images["he_he"]["scale0"]["image"].shape == (3, 480, 720)
    # grayscale: converted to RGB (equal channels) with a warning, the rule recorded
    Image.fromarray(levels[1][..., 0]).save(tmp_path / "gray.png")
    with pytest.warns(UserWarning, match="grayscale"):
        gray = read_wsi(tmp_path / "gray.png", mpp=1.0)
    img = gray.images["gray_he"]["scale0"]["image"].values
    np.testing.assert_array_equal(img[0], levels[1][..., 0])
    np.testing.assert_array_equal(img[0], img[2])
    assert "converted" in gray.attrs["nichekd"]["wsi"]["gray"]["intensity_rule"]


@pytest.mark.parametrize(
    ("data", "kwargs"),
    [
        (np.zeros((4, 256, 256), np.uint16), {"photometric": "minisblack", "metadata": {"axes": "CYX"}}),
        (np.zeros((3, 256, 256), np.uint16), {"photometric": "minisblack", "metadata": {"axes": "CYX"}}),
    ],
    ids=["fluorescence-4ch-uint16", "3ch-uint16"],
)
def test_non_rgb_images_are_refused(tmp_path, data, kwargs):
    path = tmp_path / "fluo.ome.tif"
    tifffile.imwrite(path, data, **kwargs)
    with pytest.raises(ValueError, match="not an RGB or grayscale brightfield"):
        read_wsi(path, mpp=0.5)


def test_16bit_and_grayscale_tiffs_are_rescaled_and_converted(tmp_path):
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (256, 256, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    with pytest.warns(UserWarning, match="x \\* 255 / 65535"):
        sdata = read_wsi(tmp_path / "rgb16.tif", mpp=0.5)
    img = sdata.images["rgb16_he"]["scale0"]["image"].values.transpose(1, 2, 0)
    # rescaled by the 16-bit range, not clipped at 255 (which would turn the image white)
    np.testing.assert_array_equal(img, np.round(rgb16 * (255 / 65535)).astype(np.uint8))
    assert sdata.attrs["nichekd"]["wsi"]["rgb16"]["intensity_rule"].startswith("uint16 scaled by its range")
    gray = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "gray.tif", gray, photometric="minisblack")
    with pytest.warns(UserWarning, match="grayscale"):
        sdata = read_wsi(tmp_path / "gray.tif", mpp=0.5)
    img = sdata.images["gray_he"]["scale0"]["image"].values
    assert all((img[c] == gray).all() for c in range(3))


def test_bad_files(tmp_path, levels):
    with pytest.raises(FileNotFoundError):
        read_wsi(tmp_path / "missing.svs")
    (tmp_path / "notes.xyz").write_bytes(b"hello world, not an image")
    with pytest.raises(ValueError, match="Unknown slide format"):
        read_wsi(tmp_path / "notes.xyz")
    (tmp_path / "fake.svs").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="does not start like a TIFF"):
        read_wsi(tmp_path / "fake.svs")
    good = write_pyramid(tmp_path / "good.tif", levels, layout="pages").read_bytes()
    (tmp_path / "header.tif").write_bytes(good[:6])
    with pytest.raises(ValueError, match="corrupt|truncated"):
        read_wsi(tmp_path / "header.tif", mpp=0.5)
    (tmp_path / "cut.tif").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupt|truncated"):
        read_wsi(tmp_path / "cut.tif", mpp=0.5)
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ValueError, match="corrupt|truncated"):
        read_wsi(tmp_path / "cut.png", mpp=0.5)


def test_openslide_formats_need_the_extra(tmp_path, monkeypatch):
    import sys

    (tmp_path / "scan.ndpi").write_bytes(b"II*\x00" + b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "openslide", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"nichekd\[wsi\]"):
        read_wsi(tmp_path / "scan.ndpi")


def test_openslide_backend_matches_tifffile(tmp_path, levels):
    pytest.importorskip("openslide")
    for layout, kw in (("svs", {"svs_mpp": 0.25}), ("pages", {"resolution": (40_000, 40_000, "CENTIMETER")})):
        path = write_pyramid(
            tmp_path / f"os_{layout}.{'svs' if layout == 'svs' else 'tif'}", levels, layout=layout, **kw
        )
        a = read_wsi(path, backend="openslide", library_id="a")
        b = read_wsi(path, backend="tifffile", library_id="a")
        assert get_transformation(a.images["a_he"], to_coordinate_system="a").to_affine_matrix(
            ("x", "y"), ("x", "y")
        )[0, 0] == pytest.approx(0.25)
        for k in range(3):
            np.testing.assert_array_equal(_cut(a, "a", k, 123.0, 45.5, 40), _cut(b, "a", k, 123.0, 45.5, 40))
    with pytest.raises(ValueError, match="OpenSlide"):
        (tmp_path / "x.ndpi").write_bytes(b"II*\x00" + b"\x00" * 64)
        read_wsi(tmp_path / "x.ndpi")


def test_read_wsi_then_tissue_mask(tmp_path):
    """The slide file -> tissue polygons -> tile centres, the H&E-only path end to end."""
    from test_tissue import synthetic_slide

    img, truth, _ = synthetic_slide()  # 2 um/px
    lv = [img, np.ascontiguousarray(img[::2, ::2]), np.ascontiguousarray(img[::4, ::4])]
    path = write_pyramid(tmp_path / "case7.ome.tif", lv, ome_mpp=2.0)
    sdata = read_wsi(path)
    assert nk.pp.tissue_mask(sdata, target_mpp=8.0) is None
    gdf = sdata.shapes["case7_tissue"]
    assert len(gdf) == 2
    np.testing.assert_allclose(gdf["area_um2"].sum(), truth.sum() * 4.0, rtol=0.06)
    assert sdata.attrs["nichekd"]["tissue"]["case7_tissue"]["params"]["level"] == 2  # read the 8 um level
    xy = nk.pp.tissue_tiles(sdata, tile_size_um=100.0)
    assert len(xy) == pytest.approx(gdf["area_um2"].sum() / 100.0**2, rel=0.06)
