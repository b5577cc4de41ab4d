"""Whole-slide H&E images (SVS, pyramidal TIFF, OME-TIFF, OpenSlide formats, JPEG/PNG) -> SpatialData.

The slide is never decoded as a whole: every pyramid level the file holds becomes one scale of a spatialdata
multiscale image, backed by a dask array that reads tiles on demand.

How levels are registered
-------------------------
spatialdata stores one transformation per coordinate system on ``scale0`` (here ``Scale([mpp_y, mpp_x])`` to
the library's coordinate system, in microns) and derives the transform of every lower level from the **shape
ratio** ``scale0.shape / level.shape`` (per axis). Scanners write level ``k`` as ``ceil(width / d_k)`` pixels
for a nominal downsample ``d_k`` (4, 16, 32, or non powers of two such as 3.99 after rounding), so the shape
ratio *is* the level's real downsample up to less than one level pixel over the whole slide; no level is
resampled or recomputed. A file without a pyramid gets lazily averaged factor-2 levels instead (with a
warning when the image is large, since any low-resolution view then reads the full image).
"""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._core.keys import image_name
from ..io._build import MIN_PYRAMID_SIZE, pyramid_scale_factors

# Plausible microns per pixel of a brightfield scan; outside it the metadata is a screen/print default.
MPP_RANGE = (0.05, 50.0)
# Above this many pixels on the long side a file without a pyramid is slow to view at low resolution.
PYRAMID_WARN_PX = 10_000
TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf8", ".qptiff")
OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide", ".dcm")
PIL_SUFFIXES = (".jpg", ".jpeg", ".png")
OPENSLIDE_HINT = (
    "install the optional extra: pip install 'nichekd[wsi]' (openslide-python and openslide-bin, which ships "
    "the OpenSlide library)"
)
PYRAMID_HINT = (
    "write a tiled pyramid once, e.g. `vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg "
    "--tile-width 512 --tile-height 512` or with tifffile (TiffWriter.write(..., tile=(512, 512), subifds=n) "
    "followed by the downsampled levels with subfiletype=1)"
)
_UNIT_TO_UM = {
    "nm": 1e-3, "µm": 1.0, "um": 1.0, "μm": 1.0, "micron": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4,
}  # fmt: skip
Backend = Literal["auto", "tifffile", "openslide", "pil"]


@dataclass
class _Slide:
    """Levels ``(y, x, c)`` (finest first) as dask arrays plus what the file says about its scale."""

    levels: list[Any]
    mpp_yx: tuple[float, float] | None
    mpp_source: str
    fmt: str
    has_pyramid: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def read_wsi(
    path: str | Path,
    *,
    library_id: str | None = None,
    mpp: float | tuple[float, float] | None = None,
    level: int | None = None,
    backend: Backend = "auto",
    chunks: int = 1024,
):
    """Open a whole-slide H&E image lazily as a SpatialData object in nichekd's standard layout.

    nichekd's own reader: spatialdata-io has no whole-slide reader (vendor pyramids with their microns per
    pixel, OpenSlide formats); its ``generic`` reader loads a single-resolution image without units.

    The result holds one multiscale image ``{library}_he`` (RGB ``uint8``, dims ``(c, y, x)``) registered to
    the coordinate system ``library`` in microns; there is no table (the slide has no spots or cells yet).
    Each pyramid level of the file is one scale (``scale0`` the finest), read tile by tile on demand.

    Parameters
    ----------
    path
        Slide file: Aperio ``.svs``, pyramidal (tiled) TIFF / BigTIFF, OME-TIFF (via ``tifffile``);
        Hamamatsu ``.ndpi``, MIRAX ``.mrxs``, Leica ``.scn``, Ventana ``.bif``, DICOM ... (via OpenSlide, the
        optional ``nichekd[wsi]`` extra); small ``.jpg``/``.png`` images (via Pillow, read into memory).
    library_id
        Section id naming the image and the coordinate system; defaults to the file name without suffix.
    mpp
        Microns per pixel of the full-resolution level, ``float`` or ``(mpp_y, mpp_x)``. Overrides the file's
        metadata (Aperio ``MPP``, OME ``PhysicalSizeX/Y`` with units, TIFF ``X/YResolution`` with
        ``ResolutionUnit``, OpenSlide ``openslide.mpp-x/y``); required when the file has none.
    level
        Finest pyramid level to keep (``0``: full resolution). ``level=1`` on a 40x slide drops the 40x level so
        that ``scale0`` is the 20x-ish level; microns per pixel follow that level's downsample.
    backend
        ``"auto"`` chooses by file type; force ``"tifffile"``, ``"openslide"`` or ``"pil"`` otherwise.
    chunks
        Dask chunk size in pixels (rounded up to a multiple of the file's tile size).

    Returns
    -------
    :class:`~spatialdata.SpatialData` with one image; ``sdata.attrs['nichekd']['wsi'][library]`` records the
    source path, format, microns per pixel of ``scale0`` and each scale's downsample relative to ``scale0``.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_wsi("slide.svs")  # doctest: +SKIP
    >>> sdata = nk.io.read_wsi("scan.tif", mpp=0.5, library_id="patient1")  # doctest: +SKIP
    >>> nk.pp.tissue_mask(sdata)  # doctest: +SKIP
    """
    from spatialdata import SpatialData

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No slide file at {path}.")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass the slide file itself (for MIRAX, the .mrxs file).")
    if chunks < 64:
        raise ValueError(f"chunks must be at least 64 pixels, got {chunks}.")
    mpp_override = _check_mpp(mpp) if mpp is not None else None
    library = str(library_id) if library_id is not None else _default_library(path)
    backend = _choose_backend(path) if backend == "auto" else backend
    if backend == "tifffile":
        slide = _open_tifffile(path, chunks)
    elif backend == "openslide":
        slide = _open_openslide(path, chunks)
    elif backend == "pil":
        slide = _open_pil(path, chunks)
    else:
        raise ValueError(f"backend must be 'auto', 'tifffile', 'openslide' or 'pil', got {backend!r}.")

    if level is not None:
        if not 0 <= int(level) < len(slide.levels):
            raise ValueError(f"level={level} is out of range: {path.name} has {len(slide.levels)} level(s).")
    level = int(level or 0)
    base_shape = np.array(slide.levels[0].shape[:2], dtype=float)
    downsample = base_shape / np.array(slide.levels[level].shape[:2], dtype=float)
    if mpp_override is not None:
        mpp_base = mpp_override
    elif slide.mpp_yx is not None:
        mpp_base = slide.mpp_yx
    else:
        raise ValueError(
            f"{path.name} has no usable microns-per-pixel metadata ({slide.mpp_source}); pass mpp= (e.g. "
            "mpp=0.25 for a 40x scan, 0.5 for 20x)."
        )
    levels = slide.levels[level:]
    mpp_yx = (float(mpp_base[0] * downsample[0]), float(mpp_base[1] * downsample[1]))

    if len(levels) == 1:
        if max(levels[0].shape[:2]) > PYRAMID_WARN_PX:
            warnings.warn(
                f"{path.name} has no pyramid ({levels[0].shape[1]} x {levels[0].shape[0]} px, one level): "
                "low-resolution views such as tissue_mask will read the whole image. To make it fast, "
                f"{PYRAMID_HINT}.",
                UserWarning,
                stacklevel=2,
            )
        levels = _lazy_pyramid(levels[0], chunks)

    image = _multiscale_image(levels, mpp_yx, library)
    sdata = SpatialData(images={image_name(library): image})
    sdata.attrs["nichekd"] = {
        "wsi": {
            library: {
                "path": str(path),
                "format": slide.fmt,
                "mpp": [mpp_yx[0], mpp_yx[1]],
                "mpp_source": "mpp=" if mpp_override is not None else slide.mpp_source,
                "level_offset": level,
                "level_downsamples": [float(levels[0].shape[0] / lv.shape[0]) for lv in levels],
                "file_pyramid": bool(slide.has_pyramid),
                "intensity_rule": slide.extra.get("rescale", "uint8 kept"),
            }
        }
    }
    return sdata


# ---------------------------------------------------------------------------------------------------------------
# format detection and metadata


def _default_library(path: Path) -> str:
    name = path.name
    for suffix in sorted(TIFF_SUFFIXES + OPENSLIDE_SUFFIXES + PIL_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return path.stem


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def _choose_backend(path: Path) -> str:
    name = path.name.lower()
    head = _magic(path)
    if name.endswith(OPENSLIDE_SUFFIXES):
        return "openslide"
    is_tiff = head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    if is_tiff:
        return "tifffile"
    if head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n":
        return "pil"
    if name.endswith(TIFF_SUFFIXES + PIL_SUFFIXES):
        raise ValueError(
            f"{path.name} does not start like a TIFF, JPEG or PNG file (first bytes {head!r}); it is corrupt or "
            "has the wrong suffix."
        )
    raise ValueError(
        f"Unknown slide format {path.suffix!r} ({path.name}). Supported: {', '.join(TIFF_SUFFIXES)} (tifffile), "
        f"{', '.join(OPENSLIDE_SUFFIXES)} (OpenSlide; {OPENSLIDE_HINT}), {', '.join(PIL_SUFFIXES)}. "
        "Convert other formats to a pyramidal TIFF, e.g. with `vips tiffsave`."
    )


def _check_mpp(mpp: Any, source: str = "mpp=") -> tuple[float, float]:
    arr = np.broadcast_to(np.asarray(mpp, dtype=float).ravel(), (2,)) if np.ndim(mpp) <= 1 else None
    if arr is None or not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"Microns per pixel must be positive numbers, got {mpp!r} from {source}.")
    if not (MPP_RANGE[0] <= arr.min() and arr.max() <= MPP_RANGE[1]):
        raise ValueError(
            f"Microns per pixel {arr.tolist()} from {source} is outside the range of brightfield scans "
            f"{MPP_RANGE}: 40x is ~0.25, 20x ~0.5. Pass mpp= in microns per pixel (not pixels per micron)."
        )
    return float(arr[0]), float(arr[1])


def _plausible(mpp_yx: tuple[float, float]) -> bool:
    return all(MPP_RANGE[0] <= m <= MPP_RANGE[1] for m in mpp_yx)


def _svs_mpp(description: str) -> float | None:
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description or "")
    return float(match.group(1)) if match else None


def _ome_mpp(ome_xml: str | None, series: int = 0) -> tuple[float, float] | None:
    if not ome_xml:
        return None
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = root.findall(".//{*}Image/{*}Pixels")
    if len(pixels) <= series:
        return None
    px = pixels[series].attrib
    out = []
    for ax in ("Y", "X"):
        value = px.get(f"PhysicalSize{ax}")
        if value is None:
            return None
        unit = px.get(f"PhysicalSize{ax}Unit", "µm")
        if unit not in _UNIT_TO_UM:
            return None
        out.append(float(value) * _UNIT_TO_UM[unit])
    return out[0], out[1]


def _tiff_resolution_mpp(page: Any) -> tuple[tuple[float, float] | None, str]:
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None, "no XResolution/YResolution tags"
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    um_per_unit = {2: 25_400.0, 3: 10_000.0}.get(unit)
    if um_per_unit is None:
        return None, "TIFF resolution without a physical unit (ResolutionUnit NONE)"

    def ppu(tag: str) -> float:
        value = tags[tag].value
        num, den = value if isinstance(value, tuple) else (value, 1)
        return float(num) / float(den) if den else 0.0

    res = (ppu("YResolution"), ppu("XResolution"))
    if min(res) <= 0:
        return None, "zero TIFF resolution"
    mpp = (um_per_unit / res[0], um_per_unit / res[1])
    if not _plausible(mpp):
        # 72/96/300 dpi are screen/print defaults written by image editors, not a microscope scale
        return (
            None,
            f"TIFF resolution {res[1]:g} pixels per {'inch' if unit == 2 else 'cm'} is not a scan scale",
        )
    return mpp, "TIFF XResolution/YResolution"


# ---------------------------------------------------------------------------------------------------------------
# backends


def _rgb_levels(levels: list[Any], axes: str, dtype: Any, fmt: str, path: Path) -> tuple[list[Any], str]:
    """``(y, x, 3)`` uint8 arrays of an RGB(A) or grayscale series, and the intensity rule applied.

    16-bit and float series are rescaled lazily by :func:`nichekd._core.image.to_uint8` (16-bit by its range);
    grayscale (one channel) is repeated to RGB with a warning; several channels that are not RGB
    (fluorescence, multiplexed) are refused.
    """
    import dask.array as da

    from .._core.image import to_uint8

    desc = f"{path.name} ({fmt}, axes {axes!r}, shape {tuple(levels[0].shape)}, {np.dtype(dtype)})"
    gray = axes == "YX"
    rgb = "S" in axes and axes.replace("S", "") == "YX" and levels[0].shape[axes.index("S")] in (3, 4)
    if not (rgb or gray):
        raise ValueError(
            f"{desc} is not an RGB or grayscale brightfield image. nichekd predicts niches from H&E scans; "
            "fluorescence or multiplexed images (several channels) are not supported. If this is an H&E scan "
            "stored another way, convert it to 8-bit RGB first."
        )
    if gray:
        warnings.warn(
            f"{desc} is grayscale: converted to RGB by repeating the channel. Stain colour is lost, so "
            "colour-based features differ from those of a colour scan.",
            UserWarning,
            stacklevel=4,
        )
    prepared = []
    for arr in levels:
        if gray:
            arr = da.stack([arr, arr, arr], axis=2)
        elif axes.index("S") == 0:  # planar RGB
            arr = arr.transpose(1, 2, 0)
        prepared.append(arr[..., :3])
    out, rule = [], "uint8 kept"
    for arr in prepared:
        if arr.dtype != np.uint8:  # one rule for every level: sampled from the coarsest (cheap, whole image)
            arr, rule = to_uint8(arr, source=path.name, sample_from=prepared[-1])
        out.append(arr)
    if rule != "uint8 kept":
        warnings.warn(f"{desc} is not 8-bit: rescaled to uint8 ({rule}).", UserWarning, stacklevel=4)
    return out, rule


def _tile_chunks(tile: tuple[int, int] | None, chunks: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """Chunk size: a multiple of the file's tile so that no tile is decoded twice for one chunk."""
    if not tile or min(tile) <= 0:
        return min(chunks, shape[0]), min(chunks, shape[1])
    return tuple(min(int(np.ceil(chunks / t)) * t, s) for t, s in zip(tile, shape[:2], strict=True))


def _open_tifffile(path: Path, chunks: int) -> _Slide:
    import dask.array as da
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        page = series.keyframe
    except Exception as exc:  # tifffile raises several types on damaged headers
        raise ValueError(
            f"{path.name} could not be read as TIFF ({type(exc).__name__}: {exc}); the file is corrupt, "
            "truncated or not a TIFF."
        ) from exc
    fmt = "svs" if tif.is_svs else "ome-tiff" if tif.is_ome else "ndpi" if tif.is_ndpi else "tiff"
    if fmt == "ndpi":
        tif.close()
        return _open_openslide(path, chunks)
    axes = series.axes
    level_series = list(series.levels) + _reduced_pages(tif, series)
    dask_levels = []
    for lv in level_series:
        arr = zarr.open(lv.aszarr(level=0), mode="r")
        if arr.ndim != len(axes):
            raise ValueError(
                f"{path.name}: unexpected array layout {arr.shape} for axes {axes!r}; expected a 2-D RGB image."
            )
        key = lv.keyframe
        tile = (int(key.tilelength), int(key.tilewidth)) if key.is_tiled else None
        cy, cx = _tile_chunks(tile, chunks, tuple(arr.shape[axes.index(a)] for a in "YX"))
        chunk = tuple({"Y": cy, "X": cx}.get(a, -1) for a in axes)
        dask_levels.append(da.from_zarr(arr, chunks=chunk))
    levels, rule = _rgb_levels(dask_levels, axes, series.dtype, fmt, path)
    _probe(levels, path)

    mpp, source = None, "no resolution metadata"
    if fmt == "svs":
        value = _svs_mpp(page.description)
        if value is not None:
            mpp, source = (value, value), "Aperio MPP"
        else:
            source = "Aperio description without MPP"
    if mpp is None and fmt == "ome-tiff":
        mpp = _ome_mpp(tif.ome_metadata)
        source = "OME PhysicalSizeX/Y" if mpp else "OME metadata without PhysicalSizeX/Y"
    if mpp is None:
        mpp, source = _tiff_resolution_mpp(page)
    if mpp is not None and not _plausible(mpp):
        source, mpp = f"{source} gives {mpp}, outside {MPP_RANGE}", None
    return _Slide(levels, mpp, source, fmt, has_pyramid=len(levels) > 1, extra={"tif": tif, "rescale": rule})


def _reduced_pages(tif: Any, series: Any) -> list[Any]:
    """Reduced-resolution pages that tifffile left as separate series (it only groups a constant factor).

    A later series is a further level when its pages are flagged *reduced* (NewSubfileType bit 0), and it has
    the same axes and dtype, the same aspect ratio (within 1%) and fewer pixels than the last level.
    """
    if series.kind != "generic":
        return []
    extra: list[Any] = []
    last = series.levels[-1]
    for other in tif.series[1:]:
        key = other.keyframe
        if not key.is_reduced or other.axes != series.axes or other.dtype != series.dtype:
            continue
        ry, rx = (last.shape[series.axes.index(a)] / other.shape[series.axes.index(a)] for a in "YX")
        if min(ry, rx) > 1 and abs(ry / rx - 1) < 0.01:
            extra.append(other)
            last = other
    return extra


class _OpenSlideLevel:
    """Array-like view of one OpenSlide level; dask calls ``__getitem__`` with one chunk's slices."""

    def __init__(self, slide: Any, level: int) -> None:
        self.slide = slide
        self.level = level
        width, height = slide.level_dimensions[level]
        self.shape = (int(height), int(width), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.downsample = float(slide.level_downsamples[level])
        bg = slide.properties.get("openslide.background-color", "FFFFFF")
        self.background = np.array([int(bg[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.uint8)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)[(slice(None),) * 2 + key[2:]]
        # read_region takes the top-left corner in level-0 pixels
        loc = (round(x0 * self.downsample), round(y0 * self.downsample))
        rgba = np.asarray(self.slide.read_region(loc, self.level, (x1 - x0, y1 - y0)))
        # transparent pixels lie outside the scanned area: show them as the slide background
        rgb = np.where(rgba[..., 3:4] == 0, self.background, rgba[..., :3]).astype(np.uint8)
        return rgb[(slice(None), slice(None)) + tuple(key[2:])]


def _open_openslide(path: Path, chunks: int) -> _Slide:
    import dask.array as da

    try:
        import openslide
    except ImportError as exc:  # the library ships as a wheel (openslide-bin), but is optional
        raise ImportError(f"Reading {path.name} needs OpenSlide: {OPENSLIDE_HINT}.") from exc
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise ValueError(f"OpenSlide does not recognise {path.name} as a slide format ({exc}).") from exc
    except openslide.OpenSlideError as exc:
        raise ValueError(
            f"{path.name} could not be opened by OpenSlide ({exc}); the file may be corrupt."
        ) from exc
    props = slide.properties
    tile = None
    if "openslide.level[0].tile-height" in props:
        tile = (int(props["openslide.level[0].tile-height"]), int(props["openslide.level[0].tile-width"]))
    levels = []
    for k in range(slide.level_count):
        view = _OpenSlideLevel(slide, k)
        cy, cx = _tile_chunks(tile, chunks, view.shape)
        levels.append(
            da.from_array(view, chunks=(cy, cx, 3), meta=np.empty((0, 0, 0), np.uint8), asarray=False)
        )
    _probe(levels, path)
    mpp, source = None, "no openslide.mpp-x/y property"
    if openslide.PROPERTY_NAME_MPP_X in props and openslide.PROPERTY_NAME_MPP_Y in props:
        mpp = (float(props[openslide.PROPERTY_NAME_MPP_Y]), float(props[openslide.PROPERTY_NAME_MPP_X]))
        source = "openslide.mpp-x/y"
        if not _plausible(mpp):
            source, mpp = f"openslide.mpp-x/y {mpp} outside {MPP_RANGE}", None
    fmt = str(props.get(openslide.PROPERTY_NAME_VENDOR, "openslide"))
    return _Slide(levels, mpp, source, fmt, has_pyramid=len(levels) > 1, extra={"slide": slide})


def _open_pil(path: Path, chunks: int) -> _Slide:
    import dask.array as da
    from PIL import UnidentifiedImageError

    from ._checks import open_pil, pil_to_rgb

    # the size comes from the header first: huge PNG/JPEG are refused, Pillow's guard is never switched off
    img = open_pil(path, "slide image")
    mode = img.mode
    try:
        info = dict(img.info)
        img.load()
        arr = pil_to_rgb(img, path.name)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(
            f"{path.name} could not be decoded ({exc}); the file is corrupt or truncated."
        ) from exc
    finally:
        img.close()
    rule = "uint8 kept" if mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else f"{mode} converted to 8-bit RGB"
    mpp, source = None, "JPEG/PNG without resolution metadata"
    if "dpi" in info:
        dpi = np.asarray(info["dpi"], dtype=float).ravel()
        if dpi.size >= 2 and (dpi > 0).all():
            cand = (25_400.0 / dpi[1], 25_400.0 / dpi[0])
            if _plausible(cand):
                mpp, source = cand, "image dpi"
            else:
                source = f"image dpi {dpi.tolist()} is a screen/print default, not a scan scale"
    level = da.from_array(arr, chunks=(min(chunks, arr.shape[0]), min(chunks, arr.shape[1]), 3))
    fmt = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    return _Slide([level], mpp, source, fmt, False, extra={"rescale": rule})


def _probe(levels: list[Any], path: Path) -> None:
    """Decode one small chunk at each end of the slide so that a damaged file fails now, not mid-analysis."""
    try:
        last = levels[-1]
        _ = np.asarray(last[: min(64, last.shape[0]), : min(64, last.shape[1])].compute())
        first = levels[0]
        _ = np.asarray(first[-1:, -1:].compute())
    except Exception as exc:
        raise ValueError(
            f"{path.name} could not be decoded ({type(exc).__name__}: {exc}); the file is truncated, corrupt, or "
            "uses a compression that needs `imagecodecs` (pip install imagecodecs)."
        ) from exc


# ---------------------------------------------------------------------------------------------------------------
# building the spatialdata element


def _lazy_pyramid(base: Any, chunks: int) -> list[Any]:
    """Factor-2 averaged levels computed on demand (only for files that hold a single level)."""
    import dask.array as da

    levels = [base]
    for factor in pyramid_scale_factors(base.shape[:2], MIN_PYRAMID_SIZE):
        prev = levels[-1]
        even = prev.rechunk((_even(prev.chunks[0]), _even(prev.chunks[1]), 3))
        nxt = da.coarsen(np.mean, even, {0: factor, 1: factor}, trim_excess=True)
        nxt = da.round(nxt).astype(np.uint8)
        levels.append(nxt.rechunk((min(chunks, nxt.shape[0]), min(chunks, nxt.shape[1]), 3)))
    return levels


def _even(chunks: tuple[int, ...]) -> int:
    size = max(chunks)
    return size + (size % 2)


def _multiscale_image(levels: list[Any], mpp_yx: tuple[float, float], library: str):
    """Wrap ``(y, x, 3)`` levels into a validated spatialdata multiscale image (``scale0`` ... ``scaleN``)."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale, set_transformation
    from spatialdata.transformations._utils import compute_coordinates
    from xarray import Dataset, DataTree

    scales = {}
    for i, arr in enumerate(levels):
        xarr = Image2DModel.parse(
            arr.transpose(2, 0, 1),
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            transformations={library: Identity()},
        )
        scales[f"scale{i}"] = Dataset({"image": xarr})
    tree = DataTree.from_dict(scales)
    # set on scale0; spatialdata prepends each level's shape-ratio Scale (see the module docstring)
    set_transformation(tree, Scale([mpp_yx[0], mpp_yx[1]], axes=("y", "x")), to_coordinate_system=library)
    tree = compute_coordinates(tree)
    Image2DModel().validate(tree)
    return tree
