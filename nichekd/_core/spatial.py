"""Read what a SpatialData object says: which elements a table annotates, where they are, in which units.

Every nichekd function finds its spots/cells, their micron coordinates and their H&E image here, from the
elements themselves, so that objects made by spatialdata-io (``visium``, ``visium_hd``, ``xenium``), by nichekd's
readers, or by a colleague's code all go through the same path:

1. **Libraries** (tissue sections): the values of ``obs[library_key]``; by default the ``"library"`` column when
   the table has one, else one library per annotated element (the table's ``region_key``).
2. **Coordinates**: the centroids of the annotated shapes element (matched through ``instance_key``), or of
   the annotated labels element (a segmentation mask: the centroid of each label's pixels on its
   full-resolution level, matched through ``instance_key``), transformed to the library's coordinate system;
   ``obsm['spatial']`` only where no element is annotated (an AnnData alone).
3. **Units**: microns per coordinate-system unit, from (in this order) the ``microns_per_unit`` argument, the
   table's ``uns['spatial'][library]['scalefactors']['microns_per_pixel']`` (Space Ranger's key: microns per unit
   of ``obsm['spatial']`` and of the annotated shapes; for a labels element, whose pixels take their size from
   its transformation, microns per unit of the coordinate system), the physical size of the annotated shapes where the
   technology fixes it (Visium spots are 55 um wide, Visium HD bins are named by their size), or Xenium's
   convention (shapes in microns). Visium's scale comes from the spot array (``obs['array_row']``,
   ``obs['array_col']``: spots 100 um apart) where the table has it, else from Space Ranger's
   ``spot_diameter_fullres`` (a 65 um circle, as 10x documents it). Where none applies, an error names the argument to pass. Pixels are never
   taken for microns.
4. **Image**: among the images registered to the same coordinate system, the finest H&E one whose extent holds
   the spots; a constant placeholder (such as an all-black ``hires`` image) is skipped with a warning, and images
   that are no H&E (fluorescence channels such as ``DAPI``, two channels) are skipped and named, with the reason,
   where no image is left. An image is H&E when its channels (the ``c`` coordinate) are red, green and blue
   (``r, g, b`` in any order, alpha dropped) or unnamed (``0, 1, 2``); see :func:`image_problem`.
   :func:`resolve_image` applies the same rule where there is no table (tissue detection).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .backing import check_element_files
from .image import rgb_channels
from .keys import SPATIAL_KEY, TABLE_KEY, image_name
from .patches import image_pyramid, level_arrays
from .table import get_table, library_column, spatial_coords, table_region_keys
from .units import (
    HD_BIN_NAME,
    VISIUM_FULLRES_DIAMETER_UM,
    VISIUM_SPOT_UM,
    _metadata,
    _scalefactors,
    _shape_size,
    _spaceranger,
    _visium_array_scale,
    linear_scale,
)

# an image holds a library's spots when at least this share of them lies on it
_MIN_ON_IMAGE = 0.5


@dataclass(frozen=True)
class Library:
    """One tissue section: its rows in the table, its elements and its scale."""

    name: str
    rows: np.ndarray  # positions in the table
    region: str | None  # the annotated shapes element (None for an AnnData alone)
    coordinate_system: str | None
    microns_per_unit: float  # microns per unit of coordinate_system
    image: str | None
    diameter_um: float | None  # spot/bin/cell size where the shapes give one
    technology: str = "unknown"
    image_note: str = ""  # why no image was chosen, for the error message
    image_problems: tuple[str, ...] = ()  # images of the coordinate system that are no usable H&E, and why


@dataclass
class SpatialContext:
    """What a function needs to know about a table and its elements, resolved once per call."""

    sdata: Any
    table: ad.AnnData
    library_key: str | None
    labels: np.ndarray  # library of each row (str)
    libraries: dict[str, Library]
    xy_um: np.ndarray  # (n, 2) micron coordinates of every row, in its library's coordinate system
    _pyramids: dict = field(default_factory=dict, repr=False)

    def library(self, name: str) -> Library:
        """The record of one library, or an error naming the libraries that exist."""
        if str(name) not in self.libraries:
            raise KeyError(f"No library {name!r}; the table has {sorted(self.libraries)}.")
        return self.libraries[str(name)]

    def pyramid(self, name: str, image_key: str | None = None):
        """The image pyramid of library ``name`` in microns (see :func:`nichekd.image_pyramid`)."""

        lib = self.library(name)
        key = image_key or lib.image
        cs = lib.coordinate_system
        if key is None:
            images = sorted(getattr(self.sdata, "images", {}) or {})
            if lib.image_problems:
                raise ValueError(
                    f"Library {name!r} has no usable H&E image in its coordinate system {cs!r}. "
                    f"{_why(lib.image_problems, lib.image_note)} Pass image_key= with an H&E (RGB) image "
                    f"registered to {cs!r}, or add one (images present: {images})."
                )
            raise ValueError(
                f"Library {name!r} has no H&E image registered to its coordinate system "
                f"{cs!r} (images present: {images}){lib.image_note}. Add the image with that "
                "coordinate system (spatialdata.transformations.set_transformation), or pass image_key= (and "
                "coordinate_system=)."
            )
        cache_key = (key, cs, lib.microns_per_unit)
        if cache_key not in self._pyramids:
            check_he_image(self.sdata, key, cs)
            pyramid = image_pyramid(self.sdata, key, cs, microns_per_unit=lib.microns_per_unit)
            pyramid.pixel_rule  # noqa: B018  channels and bit depth: refused here, before any patch is read
            self._pyramids[cache_key] = pyramid
        return self._pyramids[cache_key]


def affine_matrix(element: Any, coordinate_system: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def _coordinate_systems(element: Any) -> list[str]:
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True) or {})


def _microns_per_shape_unit(
    sdata: Any,
    table: ad.AnnData,
    library: str,
    region: str | None,
    shapes: Any,
    rows: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
    raster: bool = False,
) -> tuple[float | None, float | None, str]:
    """``(microns per intrinsic unit of the annotated shapes, element width in microns, technology)``.

    ``raster``: the element is a labels element (positions in coordinate-system units): Xenium's convention
    (shapes in microns) does not apply to it."""
    names = [library] + ([region] if region else [])
    spatial = table.uns.get("spatial", {}) or {}
    if not any(n in spatial for n in names) and len(spatial) == 1:
        names.append(next(iter(spatial)))
    reader = str((getattr(sdata, "attrs", None) or {}).get("spatialdata_io_reader", ""))
    sf = _scalefactors(table, names)
    width, form = _shape_size(shapes) if shapes is not None else (None, "")
    technology = str(_metadata(table, names).get("technology", reader or "unknown"))
    mpu = sf.get("microns_per_pixel")
    if mpu is not None and np.isfinite(float(mpu)) and float(mpu) > 0:
        mpu = float(mpu)
        return mpu, (None if width is None else width * mpu), technology
    hd = HD_BIN_NAME.search(region or "")
    if hd is not None or reader == "visium_hd":
        bin_um = float(hd.group(1)) if hd is not None else None
        if bin_um is not None and width:
            return bin_um / width, bin_um, "visium_hd"
    # the spot array is exact (100 um pitch); the drawn spot size is the fallback
    scale = (
        _visium_array_scale(table, rows, centroids) if rows is not None and centroids is not None else None
    )
    if scale is not None and form == "circle" and width:
        if abs(width * scale / VISIUM_FULLRES_DIAMETER_UM - 1) < 0.15:
            return scale, VISIUM_SPOT_UM, "visium"
    visium = reader == "visium" or _spaceranger(table, names) or sf.get("spot_diameter_fullres") is not None
    if visium:
        if scale is not None:
            return scale, VISIUM_SPOT_UM, "visium"
        d = sf.get("spot_diameter_fullres")
        d = float(d) if d is not None and float(d) > 0 else (width if form == "circle" else None)
        if d:
            return VISIUM_FULLRES_DIAMETER_UM / d, VISIUM_SPOT_UM, "visium"
    if (
        reader == "xenium" and not raster
    ):  # spatialdata-io keeps Xenium shapes in microns, scaled to pixels by their transform
        return 1.0, width, "xenium"
    return None, None, technology


def shape_centroids(shapes: Any) -> np.ndarray:
    geom = shapes.geometry
    if (geom.geom_type == "Point").all():
        return np.c_[geom.x.to_numpy(), geom.y.to_numpy()]
    cent = geom.centroid
    return np.c_[cent.x.to_numpy(), cent.y.to_numpy()]


def _check_table_coords(
    table: ad.AnnData,
    rows: np.ndarray,
    centroids: np.ndarray,
    lib: str,
    region: str,
    *,
    any_units: bool = False,
) -> None:
    """Refuse a table whose ``obsm['spatial']`` disagrees with its element (e.g. rescaled by hand, or stale):
    nichekd reads positions from the element, and a user looking at the table would be misled.

    ``any_units``: ``obsm['spatial']`` may hold the same positions in other units (one scale and offset, e.g.
    microns beside a mask in pixels, or pixel-index centroids half a pixel off); only other positions are refused.
    """
    if SPATIAL_KEY not in table.obsm:
        return
    xy = np.asarray(table.obsm[SPATIAL_KEY], dtype=float)[rows, :2]
    if xy.shape != centroids.shape or not np.isfinite(xy).all():
        return
    extent = float(np.ptp(centroids, axis=0).max()) if len(centroids) > 1 else 1.0
    ref = centroids
    off = np.linalg.norm(xy - ref, axis=1) > max(1e-3 * extent, 1e-6)
    if any_units and off.mean() > 0.01 and len(xy) > 1:
        c, x = centroids - centroids.mean(0), xy - xy.mean(0)
        scale = float((c * x).sum() / max(float((c * c).sum()), 1e-300))
        ref = scale * c + xy.mean(0)
        extent = float(np.ptp(xy, axis=0).max())
        off = np.linalg.norm(xy - ref, axis=1) > max(1e-3 * extent, 1e-6)
    if off.mean() > 0.01:
        units = " (not even in other units)" if any_units else ""
        raise ValueError(
            f"obsm['spatial'] of library {lib!r} disagrees with the centroids of its element {region!r} for "
            f"{off.mean():.0%} of the rows{units} (e.g. {np.round(xy[np.argmax(off)], 2).tolist()} vs "
            f"{np.round(ref[np.argmax(off)], 2).tolist()}). nichekd reads positions from the element: fix "
            "obsm['spatial'] (same units as the element) or delete it."
        )


def _label_ids(ids: np.ndarray, dtype: Any) -> np.ndarray:
    """Table instance ids as label values (``obs`` may hold them as strings or floats)."""
    ids = np.asarray(ids)
    if np.issubdtype(np.dtype(dtype), np.integer) and ids.dtype.kind in "OUSf":
        with contextlib.suppress(TypeError, ValueError):
            as_float = ids.astype(np.float64)
            if np.all(as_float == np.round(as_float)):
                return as_float.astype(np.int64)
    return ids


def _label_centroids(element: Any, ids: np.ndarray, lib: str, region: str, instance_key: str) -> np.ndarray:
    """``(n, 2)`` intrinsic ``(x, y)`` of the centroid of each label in ``ids``, on the full-resolution level.

    Pixel ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)`` (spatialdata's geometry), so a pixel counts at
    its centre ``(col + 0.5, row + 0.5)``; the mask is read block by block (dask chunks), never whole.
    """
    check_element_files(element, "labels element", region)  # deleted store: every cell would be background
    arr = level_arrays(element)[0]
    if set(arr.dims) != {"y", "x"}:
        raise ValueError(f"Labels element {region!r} must be 2D with dims (y, x), got {tuple(arr.dims)}.")
    arr = arr.transpose("y", "x")
    data = arr.data
    if hasattr(data, "chunks"):
        ys, xs = np.cumsum((0, *data.chunks[0])), np.cumsum((0, *data.chunks[1]))
        blocks = (
            (int(ys[i]), int(xs[j]), data.blocks[i, j])
            for i in range(len(ys) - 1)
            for j in range(len(xs) - 1)
        )
    else:
        blocks = iter([(0, 0, data)])
    parts = []
    for y0, x0, block in blocks:
        block = np.asarray(block.compute(scheduler="synchronous") if hasattr(block, "compute") else block)
        flat = block.ravel()
        where = np.flatnonzero(flat != 0)  # 0 is background
        if not where.size:
            continue
        values, inv = np.unique(flat[where], return_inverse=True)
        w = block.shape[1]
        parts.append(
            pd.DataFrame(
                {
                    "n": np.bincount(inv),
                    "x": np.bincount(inv, weights=where % w + (x0 + 0.5)),
                    "y": np.bincount(inv, weights=where // w + (y0 + 0.5)),
                },
                index=values,
            )
        )
    sums = pd.concat(parts).groupby(level=0).sum() if parts else pd.DataFrame({"n": [], "x": [], "y": []})
    pos = pd.Index(sums.index).get_indexer(_label_ids(ids, arr.dtype))
    if (pos < 0).any():
        missing = np.asarray(ids)[pos < 0]
        raise ValueError(
            f"{int((pos < 0).sum())} observations of library {lib!r} have no label in the mask {region!r} "
            f"(matched through obs[{instance_key!r}], e.g. {missing[:3].tolist()}; the mask holds {len(sums)} "
            "labels besides background 0); the table and its labels element disagree."
        )
    n = sums["n"].to_numpy(dtype=float)[pos]
    return np.c_[sums["x"].to_numpy()[pos] / n, sums["y"].to_numpy()[pos] / n]


def image_extent(sdata: Any, name: str, cs: str) -> tuple[np.ndarray, np.ndarray]:
    """Corners (min, max) of an image's bounding box in ``cs`` units."""

    pyr = image_pyramid(sdata, name, cs)
    x0, x1, y0, y1 = pyr.extent_um  # in coordinate-system units here (microns_per_unit=1)
    return np.array([x0, y0]), np.array([x1, y1])


def is_placeholder(sdata: Any, name: str) -> bool:
    """True for a constant image (an all-black or all-white stand-in): its coarsest level has no contrast.

    An image read lazily from a store that was deleted since would read as one (zarr fills missing chunks):
    that is refused first, naming the files (:func:`nichekd._core.backing.check_element_files`)."""

    check_element_files(sdata.images[name], "image", name)
    arrays = level_arrays(sdata.images[name])
    if _windows_differ(arrays[0]):
        return False
    arr = arrays[-1]
    data = arr.data
    h, w = int(arr.sizes["y"]), int(arr.sizes["x"])
    step = max(1, int(max(h, w) // 512))
    sub = data[:3, ::step, ::step]
    sub = np.asarray(sub.compute(scheduler="synchronous") if hasattr(sub, "compute") else sub, dtype=float)
    return float(sub.std()) < 1e-3


def _windows_differ(arr: Any, size: int = 256) -> bool:
    """True when a few small windows of the finest level already show clear contrast (a standard deviation of
    at least one grey level, 1/255 for float images). They cost a few chunks, where the coarsest level of a
    pyramid that spatialdata computes lazily costs a pass over the whole image; an image that does not pass
    here goes on to the full check."""
    h, w = int(arr.sizes["y"]), int(arr.sizes["x"])
    data = arr.data
    wins = []
    for fy, fx in ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75), (0.25, 0.75), (0.75, 0.25)):
        y0, x0 = max(0, int(h * fy) - size // 2), max(0, int(w * fx) - size // 2)
        win = data[:3, y0 : y0 + size, x0 : x0 + size]
        wins.append(
            np.asarray(win.compute(scheduler="synchronous") if hasattr(win, "compute") else win).ravel()
        )
    grey = 1.0 if np.issubdtype(data.dtype, np.integer) else 1.0 / 255.0
    return float(np.concatenate(wins).astype(float).std()) >= grey


def image_problem(sdata: Any, name: str, *, grey: bool = False) -> str | None:
    """Why image element ``name`` is no usable H&E image, as a sentence (``None`` when it is one).

    The one rule every nichekd function applies to an image, made by a reader or by hand: dims ``(c, y, x)``;
    channels named red, green and blue (``r, g, b`` in any order, an alpha channel dropped) or unnamed
    (spatialdata's default ``0, 1, 2``; a fourth unnamed channel is alpha for ``uint8``), see
    :func:`nichekd._core.image.rgb_channels`; one channel (grayscale) only where ``grey``; and not constant
    (a blank placeholder, such as spatialdata-io's all-black ``hires`` image of some Visium outputs).
    """
    problem = _channel_problem(sdata, name, grey=grey)
    if problem is None and is_placeholder(sdata, name):
        problem = _blank(name)
    return problem


def _channel_problem(sdata: Any, name: str, *, grey: bool = False) -> str | None:
    arr = level_arrays(sdata.images[name])[0]
    if set(arr.dims) != {"c", "y", "x"}:
        return f"The image {name!r} has dims {tuple(arr.dims)}, not (c, y, x): it is no 2D RGB image."
    if arr.dtype == np.bool_:
        return (
            f"The image {name!r} is a binary mask (bool), not an H&E image: a mask holds no stain colour, so it "
            "cannot be converted into one (a tissue mask belongs in sdata.labels, e.g. "
            "spatialdata.models.Labels2DModel)."
        )
    names = arr.coords["c"].values if "c" in arr.coords else range(int(arr.sizes["c"]))
    try:
        rgb_channels(list(names), arr.dtype, f"image {name!r}", grey=grey)
    except ValueError as err:
        return str(err)
    return None


def _why(problems: tuple[str, ...] | list[str], note: str = "") -> str:
    """The sentences saying why the images of a coordinate system were not used."""
    off = f" Besides,{note[1:]}." if note else ""
    return " ".join(problems) + off


def _blank(name: str) -> str:
    return f"The image {name!r} is blank (constant pixels): a placeholder, not an H&E scan."


def check_he_image(sdata: Any, name: str, coordinate_system: str | None = None) -> None:
    """Raise (ValueError) naming what is wrong with image ``name`` as an H&E image and the fix (see
    :func:`image_problem`; grayscale images pass, and are read as RGB with a warning)."""
    problem = image_problem(sdata, name, grey=True)
    if problem is not None:
        where = f" registered to {coordinate_system!r}" if coordinate_system else ""
        others = sorted(n for n in (getattr(sdata, "images", {}) or {}) if n != name)
        raise ValueError(
            f"{problem} Pass image_key= with an H&E (RGB) image{where}"
            + (f" (other images: {others})." if others else ".")
        )


def _choose_image(
    sdata: Any, cs: str, xy_cs: np.ndarray, prefer: list[str], image_key: str | None
) -> tuple[str | None, list[str], str, tuple[str, ...]]:
    """The finest H&E image in ``cs`` that holds the spots; the placeholders skipped; a note on images the
    spots lie off; why the other images of ``cs`` are no usable H&E (:func:`image_problem`)."""
    from spatialdata.transformations import get_transformation

    if image_key is not None:
        if image_key not in (getattr(sdata, "images", {}) or {}):
            raise KeyError(
                f"No image element {image_key!r}; the object has images {sorted(sdata.images)}. "
                "Pass image_key= with one of those."
            )
        if cs not in (get_transformation(sdata.images[image_key], get_all=True) or {}):
            raise ValueError(
                f"Image {image_key!r} is not registered to the coordinate system {cs!r} of its spots "
                f"(it is registered to {_coordinate_systems(sdata.images[image_key])}). Register it with "
                "spatialdata.transformations.set_transformation, or pass coordinate_system=."
            )
        return image_key, [], "", ()
    candidates = []
    skipped = []
    off = []
    problems = []
    for name, element in (getattr(sdata, "images", {}) or {}).items():
        if cs not in (get_transformation(element, get_all=True) or {}):
            continue
        lo, hi = image_extent(sdata, name, cs)
        inside = ((xy_cs >= lo) & (xy_cs <= hi)).all(1).mean() if len(xy_cs) else 0.0
        if inside < _MIN_ON_IMAGE:
            off.append(f"{name!r} holds {inside:.0%}")
            continue
        problem = _channel_problem(sdata, name)  # fluorescence (e.g. Xenium morphology), 2 channels, ...
        if problem is None and is_placeholder(sdata, name):
            problem = _blank(name)
            skipped.append(name)
        if problem is not None:
            problems.append(problem)
            continue

        unit_per_px = image_pyramid(sdata, name, cs).levels[0].mpp
        named = any(name.startswith(p) for p in prefer if p)
        candidates.append((not named, unit_per_px, name))
    note = (
        f"; the spots lie off image {', '.join(off)} of them (coordinates or registration in other units?)"
        if off
        else ""
    )
    if not candidates:
        return None, skipped, note, tuple(problems)
    return min(candidates)[2], skipped, "", tuple(problems)


def resolve_image(
    sdata: Any,
    image_key: str | None = None,
    coordinate_system: str | None = None,
    *,
    cs_argument: str = "coordinate_system",
) -> tuple[str, str]:
    """``(image element, coordinate system)`` of the H&E image of an object read without a table (a slide).

    The same rule as :func:`resolve` (:func:`image_problem`): with ``image_key`` that image, refused with the
    reason when it is no usable H&E; else the one H&E image (of ``coordinate_system`` when given; an image
    named after it, such as ``{library}_he``, first). The coordinate system defaults to the image's only one
    (its only one besides ``"global"``). ``cs_argument`` is the caller's name for the coordinate system, for
    the messages (``library`` in :func:`nichekd.pp.tissue_mask`).
    """
    from spatialdata.transformations import get_transformation

    if not hasattr(sdata, "images"):
        raise TypeError(
            f"Expected a SpatialData object with an H&E image, got {type(sdata).__name__}; read the slide with "
            "nichekd.io.read_wsi."
        )
    images = dict(sdata.images)
    if image_key is None:
        pool = [
            n
            for n, el in images.items()
            if coordinate_system is None or coordinate_system in (get_transformation(el, get_all=True) or {})
        ]
        if coordinate_system is not None and images and not pool:
            systems = sorted(
                {c for el in images.values() for c in (get_transformation(el, get_all=True) or {})}
            )
            raise KeyError(
                f"No image is registered to {cs_argument} {coordinate_system!r}; the object's images "
                f"{sorted(images)} are registered to {systems}. Pass one of those as {cs_argument}=."
            )
        problems = {n: image_problem(sdata, n) for n in pool}
        usable = [n for n in pool if problems[n] is None]
        if coordinate_system is not None:
            usable = [n for n in usable if n.startswith(coordinate_system)] or usable
            if image_name(coordinate_system) in usable:
                usable = [image_name(coordinate_system)]
        if len(usable) != 1:
            where = f" registered to {coordinate_system!r}" if coordinate_system is not None else ""
            if usable:
                raise ValueError(
                    f"Pass image_key= or {cs_argument}=: the object has {len(usable)} H&E images{where} {usable}."
                )
            why = " ".join(p for p in problems.values() if p)
            raise ValueError(
                f"No usable H&E image{where} among the object's images {sorted(images)}"
                + (f": {why}" if why else ".")
                + " Pass image_key= with an H&E (RGB) image"
                + (f", or another {cs_argument}=." if coordinate_system is not None else ".")
            )
        image_key = usable[0]
    if image_key not in images:
        raise KeyError(f"No image element {image_key!r}; the object has images {sorted(images)}.")
    systems = sorted(get_transformation(images[image_key], get_all=True) or {})
    if coordinate_system is None:
        named = [c for c in systems if c != "global"]
        if len(named) == 1 or len(systems) == 1:
            coordinate_system = (named or systems)[0]
        else:
            raise ValueError(
                f"Pass {cs_argument}=: image {image_key!r} is registered to the coordinate systems {systems}."
            )
    if coordinate_system not in systems:
        raise KeyError(
            f"Image {image_key!r} is not registered to {cs_argument} {coordinate_system!r}; it has {systems}."
        )
    check_he_image(sdata, image_key, coordinate_system)
    return image_key, coordinate_system


def _choose_cs(sdata: Any, region_el: Any, coordinate_system: str | None, library: str) -> str:
    systems = _coordinate_systems(region_el)
    if coordinate_system is not None:
        if coordinate_system not in systems:
            raise ValueError(
                f"The spots/cells of library {library!r} are not registered to coordinate_system="
                f"{coordinate_system!r}; they are registered to {systems}. Pass one of those."
            )
        return coordinate_system
    if not systems:
        raise ValueError(f"The shapes of library {library!r} are registered to no coordinate system.")
    # prefer a system holding an image and in which the shapes sit natively (identity), then the library's name
    from spatialdata.transformations import get_transformation

    images = getattr(sdata, "images", {}) or {}

    def rank(cs: str) -> tuple:
        has_image = any(cs in (get_transformation(im, get_all=True) or {}) for im in images.values())
        native = np.allclose(affine_matrix(region_el, cs), np.eye(3))
        return (not has_image, not native, cs != library, cs)

    return sorted(systems, key=rank)[0]


def resolve(
    sdata: Any,
    *,
    table_key: str = TABLE_KEY,
    library_key: str | None = None,
    coordinate_system: str | None = None,
    microns_per_unit: float | None = None,
    image_key: str | dict[str, str] | None = None,
    need_image: bool = False,
    images: bool = True,
) -> SpatialContext:
    """Resolve libraries, micron coordinates and images of a table (see the module docstring).

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData`, or a table (:class:`~anndata.AnnData`) alone.
    table_key
        Table in ``sdata``.
    library_key
        ``obs`` column of sections (``None``: ``"library"`` if present, else one library per annotated element).
    coordinate_system
        Coordinate system to work in (default: one that holds an image of the spots).
    microns_per_unit
        Microns per unit of that coordinate system, where the object does not say (e.g. shapes and images in
        pixels from a custom pipeline).
    image_key
        Image element (or ``{library: element}``) instead of the automatic choice.
    need_image
        Raise when a library has no image.
    images
        Choose each library's image (``False``: coordinates and units only, faster).

    Returns
    -------
    The resolved :class:`SpatialContext`; nothing in ``sdata`` is modified.
    """
    table = get_table(sdata, table_key)
    if microns_per_unit is not None and (not np.isfinite(microns_per_unit) or microns_per_unit <= 0):
        raise ValueError(f"microns_per_unit must be a positive number, got {microns_per_unit!r}.")
    key, labels = library_column(table, library_key)
    region_key, instance_key = table_region_keys(table)
    is_sdata = not isinstance(sdata, ad.AnnData)
    xy_um = np.full((table.n_obs, 2), np.nan)
    libraries: dict[str, Library] = {}
    for lib in pd.unique(labels):
        rows = np.flatnonzero(labels == lib)
        regions = (
            pd.unique(table.obs[region_key].to_numpy()[rows].astype(str))
            if region_key is not None and region_key in table.obs
            else []
        )
        region = str(regions[0]) if len(regions) == 1 else None
        if len(regions) > 1:
            raise ValueError(
                f"Library {lib!r} spans several annotated elements {list(regions)}; pass library_key= with a "
                "column that separates sections, one element each."
            )
        shapes = sdata.shapes[region] if is_sdata and region is not None and region in sdata.shapes else None
        if shapes is not None:
            cs = _choose_cs(sdata, shapes, coordinate_system, lib)
            aff = affine_matrix(shapes, cs)
            ids = table.obs[instance_key].to_numpy()[rows] if instance_key in table.obs else None
            pos = pd.Index(shapes.index).get_indexer(ids) if ids is not None else np.array([-1])
            if (pos < 0).any():
                raise ValueError(
                    f"{int((pos < 0).sum())} observations of library {lib!r} have no shape in element {region!r} "
                    f"(matched through obs[{instance_key!r}]); the table and its element disagree."
                )
            centroids = shape_centroids(shapes)[pos]
            _check_table_coords(table, rows, centroids, lib, region)
            mpsu, diameter_um, technology = _microns_per_shape_unit(
                sdata, table, lib, region, shapes, rows, centroids
            )
            xy_cs = centroids @ aff[:2, :2].T + aff[:2, 2]
            unit_scale = linear_scale(aff)  # coordinate-system units per shape unit
        elif is_sdata and region is not None and region in (getattr(sdata, "labels", {}) or {}):
            # a segmentation mask: each observation is a label; its position is the centroid of its pixels on
            # the full-resolution level, mapped by the element's own transformation (never obsm['spatial'], and
            # never a downscaled level, whose pixels are larger)
            mask = sdata.labels[region]
            cs = _choose_cs(sdata, mask, coordinate_system, lib)
            aff = affine_matrix(mask, cs)
            if instance_key not in table.obs:
                raise ValueError(
                    f"The table annotates labels element {region!r} but has no obs[{instance_key!r}] (the label "
                    "of each observation); parse it with spatialdata.models.TableModel(instance_key=...)."
                )
            px = _label_centroids(mask, table.obs[instance_key].to_numpy()[rows], lib, region, instance_key)
            xy_cs = px @ aff[:2, :2].T + aff[:2, 2]
            _check_table_coords(table, rows, xy_cs, lib, region, any_units=True)
            # the pixels of a mask have no physical size of their own: its scale factor is per coordinate unit
            unit_scale = 1.0
            mpsu, diameter_um, technology = _microns_per_shape_unit(
                sdata, table, lib, region, None, rows, xy_cs, raster=True
            )
        else:
            cs = coordinate_system if coordinate_system is not None else (str(lib) if is_sdata else None)
            xy_cs = spatial_coords(table)[rows]
            unit_scale = 1.0
            mpsu, diameter_um, technology = _microns_per_shape_unit(
                sdata, table, lib, region, None, rows, xy_cs
            )
        if microns_per_unit is not None:
            mpu = float(microns_per_unit)
        elif mpsu is not None:
            mpu = mpsu / unit_scale
        else:
            raise ValueError(
                f"Cannot tell the units of library {lib!r} (coordinate system {cs!r}): the object records no "
                "microns per unit (no uns['spatial'][library]['scalefactors']['microns_per_pixel'], no Visium "
                "spot array, Visium HD bin or Xenium metadata). Say it once with nk.pp.set_units(sdata, "
                "microns_per_unit=...) (microns per coordinate unit; 1.0 if the coordinates are already microns). "
                "Sections joined with spatialdata.concatenate lose uns['spatial'] unless it is called with "
                "uns_merge='unique'."
            )
        if not np.isfinite(xy_cs).all():
            raise ValueError(f"Library {lib!r} has NaN or infinite coordinates; drop those observations.")
        image, note, problems = None, "", ()
        if images and is_sdata and cs is not None:
            key_i = image_key.get(str(lib)) if isinstance(image_key, dict) else image_key
            image, skipped, note, problems = _choose_image(
                sdata, cs, xy_cs, [str(lib)] + ([region] if region else []), key_i
            )
            if skipped and image is not None:
                warnings.warn(
                    f"Image(s) {skipped} of library {lib!r} are constant (placeholders); using {image!r}.",
                    UserWarning,
                    stacklevel=3,
                )
            if need_image and image is None:
                raise ValueError(
                    f"Library {lib!r} has no usable H&E image in coordinate system {cs!r}"
                    + (f". {_why(problems, note)} Images" if problems else f"{note}; images")
                    + f" present: {sorted(getattr(sdata, 'images', {}) or {})}. Register the H&E to {cs!r} "
                    "or pass image_key= and coordinate_system=."
                )
        xy_um[rows] = xy_cs * mpu
        libraries[str(lib)] = Library(
            name=str(lib),
            rows=rows,
            region=region,
            coordinate_system=cs,
            microns_per_unit=mpu,
            image=image,
            diameter_um=diameter_um,
            technology=technology,
            image_note=note,
            image_problems=problems if image is None else (),
        )
    return SpatialContext(
        sdata=sdata, table=table, library_key=key, labels=labels, libraries=libraries, xy_um=xy_um
    )


def micron_coords(data: Any, *, table_key: str = TABLE_KEY, library_key: str | None = None) -> np.ndarray:
    """``(n, 2)`` micron coordinates of every row of the table (see :func:`resolve`).

    Examples
    --------
    >>> import spatialdata_io
    >>> sdata = spatialdata_io.visium("visium_folder/", dataset_id="A")  # doctest: +SKIP
    >>> micron_coords(sdata)[:2]  # full-resolution pixels -> microns  # doctest: +SKIP
    """
    return resolve(data, table_key=table_key, library_key=library_key, images=False).xy_um


def microns_record(libraries: Any, microns_per_unit: float = 1.0) -> dict:
    """``uns['spatial']`` entries saying that ``obsm['spatial']`` of these libraries is in ``microns_per_unit``
    microns per unit (for working tables nichekd builds from micron coordinates)."""
    return {
        str(lib): {"scalefactors": {"microns_per_pixel": float(microns_per_unit)}}
        for lib in pd.unique(np.asarray(libraries).astype(str))
    }
