"""How nichekd's own readers and the simulator lay out a section; every function reads any layout.

nichekd functions find elements, coordinates and units through :mod:`nichekd._elements`, so they work on objects
made by spatialdata-io as well. The readers nichekd keeps (legacy ST, HEST, whole-slide files, the simulator)
build one library like this:

=====================  =============================================================================
element                content
=====================  =============================================================================
``{library}_he``       the H&E image, RGB ``uint8`` with dims ``(c, y, x)``, multiscale (a pyramid),
                       registered to the coordinate system ``{library}`` by ``Scale([mpp, mpp])``
                       (optionally followed by a translation): coordinates are **microns**
``{library}_{kind}s``  spots or cells as circles (``kind`` is ``spot``, ``cell`` or ``tile``), centres and
                       radii in microns, identity transform to ``{library}``
``table``              one :class:`~anndata.AnnData` annotating the shapes: ``obs['region']``
                       (the shapes element), ``obs['instance_id']`` (its index there),
                       ``obs['library']`` (categorical), ``obsm['spatial']`` (x, y in microns),
                       raw counts in ``X``
=====================  =============================================================================

The units are recorded where scanpy, squidpy and Space Ranger keep them:
``uns['spatial'][library]['scalefactors']['microns_per_pixel']`` (here 1.0: the coordinates are microns) and
``spot_diameter_fullres`` (the spot/cell diameter in those units); ``uns['spatial'][library]['metadata']`` holds
the technology and the kind of observation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

TABLE_KEY = "table"
LIBRARY_KEY = "library"
REGION_KEY = "region"
INSTANCE_KEY = "instance_id"
SPATIAL_KEY = "spatial"
SPLIT_KEY = "split"
UNITS = "micrometer"
KINDS = ("spot", "cell", "tile")
# Smallest pyramid level kept: below this many pixels on the long side a further level adds nothing.
MIN_PYRAMID_SIZE = 256


def image_name(library: str) -> str:
    """Name of a library's H&E image element."""
    return f"{library}_he"


def shapes_name(library: str, kind: str = "spot") -> str:
    """Name of a library's spots/cells/tiles shapes element."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    return f"{library}_{kind}s"


def pyramid_scale_factors(shape_yx: Sequence[int], min_size: int = MIN_PYRAMID_SIZE) -> list[int]:
    """Factor-2 pyramid steps until the long side drops below ``min_size`` pixels."""
    factors: list[int] = []
    size = max(shape_yx)
    while size // 2 >= min_size:
        factors.append(2)
        size //= 2
    return factors


# Pixels sampled per axis when deciding how to rescale an image (keeps dask images lazy).
_RANGE_SAMPLE_SIDE = 512


def _strided_sample(arr: Any, spatial_axes: tuple[int, int]) -> np.ndarray:
    step = [1] * arr.ndim
    for ax in spatial_axes:
        step[ax] = max(1, arr.shape[ax] // _RANGE_SAMPLE_SIDE)
    return np.asarray(arr[tuple(slice(None, None, s) for s in step)])


def to_uint8(image: Any, *, spatial_axes: tuple[int, int] = (0, 1), source: str = "image") -> tuple[Any, str]:
    """An 8-bit copy of ``image`` (numpy or dask, kept lazy) and the rule used, as text to record.

    Rules, by dtype: ``uint8`` is kept; other integer types are scaled by their full range
    (``x * 255 / dtype_max``, e.g. 16-bit ``x / 257``; negative values of signed types are refused); floats are
    taken as ``[0, 1]`` (``x * 255``) when a strided sample of the image stays within ``[0, 1]``, as
    ``[0, 255]`` when it stays within that, and refused otherwise (their range is unknown). Results are
    rounded and clipped to ``[0, 255]``.

    Examples
    --------
    >>> arr, rule = to_uint8(np.full((2, 2, 3), 65535, dtype=np.uint16))
    >>> int(arr.max()), rule
    (255, 'uint16 scaled by its range: x * 255 / 65535')
    """
    dtype = np.dtype(image.dtype)
    if dtype == np.uint8:
        return image, "uint8 kept"
    if dtype == np.bool_:
        raise ValueError(f"The {source} is a binary mask ({dtype}), not an H&E image.")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if info.min < 0 and float(_strided_sample(image, spatial_axes).min()) < 0:
            raise ValueError(
                f"The {source} ({dtype}) has negative values; it is not a brightfield H&E image."
            )
        scale, rule = 255.0 / info.max, f"{dtype} scaled by its range: x * 255 / {info.max}"
    elif np.issubdtype(dtype, np.floating):
        sample = _strided_sample(image, spatial_axes).astype(np.float64)
        finite = sample[np.isfinite(sample)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"The {source} is {dtype} with values in [{lo:.4g}, {hi:.4g}]: neither [0, 1] nor [0, 255], so "
                "its intensity range is unknown. Rescale it to uint8 (0-255) yourself."
            )
        scale, rule = (
            (255.0, f"{dtype} in [0, 1]: x * 255") if hi <= 1.0 else (1.0, f"{dtype} in [0, 255]: kept")
        )
    else:
        raise ValueError(f"The {source} has dtype {dtype}; an H&E image must hold numbers (uint8 RGB).")
    lib = _array_lib(image)
    out = lib.clip(lib.round(image.astype(np.float32) * np.float32(scale)), 0, 255).astype(np.uint8)
    return out, rule


def _array_lib(arr: Any):
    if type(arr).__module__.startswith("dask"):
        import dask.array as da

        return da
    return np


def as_rgb_cyx(image: Any) -> Any:
    """Return a ``(c, y, x)`` uint8 RGB array (numpy or dask) from ``(y, x, c)``/``(c, y, x)`` input.

    Non-8-bit images are rescaled by :func:`to_uint8` (16-bit by its range, floats in ``[0, 1]`` or
    ``[0, 255]``) with a warning naming the rule. Grayscale images (``(y, x)`` or one channel) are converted
    to RGB by repeating the channel, with a warning: H&E colour (the stain) is lost, so colour-based encoders
    (``"stain"``, stain normalisation) see no haematoxylin/eosin contrast and features differ from a colour
    scan of the same tissue.
    """
    import warnings

    arr = image
    lib = _array_lib(arr)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]) and 3 not in (arr.shape[0], arr.shape[-1]):
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim == 2:
        warnings.warn(
            f"The H&E image is grayscale {tuple(image.shape)}: converted to RGB by repeating the channel. Stain "
            "colour is lost, so colour-based features differ from those of a colour scan.",
            UserWarning,
            stacklevel=2,
        )
        arr = lib.stack([arr, arr, arr], axis=0)
    if arr.ndim != 3:
        raise ValueError(f"The H&E image must have 3 dimensions (RGB), got shape {arr.shape}.")
    if arr.shape[0] not in (3, 4) and arr.shape[-1] in (3, 4):
        arr = arr.transpose(2, 0, 1)
    if arr.shape[0] == 4:  # drop alpha
        arr = arr[:3]
    if arr.shape[0] != 3:
        raise ValueError(
            f"The H&E image must be RGB (3 channels), got shape {image.shape}; "
            "fluorescence or multi-channel images are not H&E."
        )
    if arr.dtype != np.uint8:
        arr, rule = to_uint8(arr, spatial_axes=(1, 2), source="H&E image")
        warnings.warn(f"The H&E image is not 8-bit: rescaled to uint8 ({rule}).", UserWarning, stacklevel=2)
    return arr


def make_image(
    image: Any, mpp: float, library: str, *, offset_um: tuple[float, float] = (0.0, 0.0), chunks: int = 1024
):
    """Parse an RGB image into a multiscale image element registered in microns.

    Parameters
    ----------
    image
        ``(y, x, c)`` or ``(c, y, x)`` RGB array (numpy or dask).
    mpp
        Microns per pixel of ``image``.
    library
        Library id; the image is registered to the coordinate system of that name.
    offset_um
        ``(x, y)`` position in microns of the image's top-left pixel corner.
    chunks
        Chunk size in pixels of the stored pyramid.
    """
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Translation
    from spatialdata.transformations import Sequence as TSequence

    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"Microns per pixel must be a positive number, got {mpp!r}; pass mpp= explicitly.")
    arr = as_rgb_cyx(image)
    transform = Scale([mpp, mpp], axes=("y", "x"))
    if offset_um != (0.0, 0.0):
        transform = TSequence([transform, Translation([offset_um[1], offset_um[0]], axes=("y", "x"))])
    factors = pyramid_scale_factors(arr.shape[1:])
    return Image2DModel.parse(
        arr,
        dims=("c", "y", "x"),
        scale_factors=factors or None,
        transformations={library: transform},
        c_coords=["r", "g", "b"],
        chunks=(3, chunks, chunks),
    )


def make_shapes(
    xy_um: np.ndarray, diameter_um: float | np.ndarray, library: str, index: Sequence | None = None
):
    """Circles (centres ``(x, y)`` and diameters in microns) registered to the library's coordinate system."""
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    xy = np.asarray(xy_um, dtype=float)
    radius = np.broadcast_to(np.asarray(diameter_um, dtype=float) / 2.0, (len(xy),)).copy()
    gdf = ShapesModel.parse(xy, geometry=0, radius=radius, index=None, transformations={library: Identity()})
    if index is not None:
        gdf.index = pd.Index(np.asarray(index))
    return gdf


def build_library(
    adata: ad.AnnData,
    *,
    library: str,
    xy_um: np.ndarray,
    diameter_um: float,
    kind: str = "spot",
    technology: str = "unknown",
    image: Any = None,
    mpp: float | None = None,
    image_offset_um: tuple[float, float] = (0.0, 0.0),
):
    """Assemble one library into a SpatialData object in the standard layout.

    This is the single constructor used by every reader and by the simulator.

    Parameters
    ----------
    adata
        Counts (observations x genes); ``obs_names`` must be unique.
    library
        Section id; names the elements and the coordinate system.
    xy_um
        ``(n, 2)`` centres ``(x, y)`` in microns.
    diameter_um
        Spot or cell diameter in microns.
    kind
        ``"spot"``, ``"cell"`` or ``"tile"``.
    technology
        Free text recorded in ``uns`` (``"visium"``, ``"st"``, ``"xenium"``, ...).
    image
        Optional RGB image (``(y, x, c)`` or ``(c, y, x)``).
    mpp
        Microns per pixel of ``image``; required with ``image``.
    image_offset_um
        ``(x, y)`` in microns of the image's top-left corner.

    Returns
    -------
    SpatialData in the standard layout.
    """
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    xy = np.asarray(xy_um, dtype=float)
    if xy.shape != (adata.n_obs, 2):
        raise ValueError(f"xy_um must have shape ({adata.n_obs}, 2), got {xy.shape}.")
    if not np.isfinite(xy).all():
        raise ValueError(
            "Spot/cell coordinates contain NaN or infinite values; drop or fix those rows first."
        )
    if not adata.obs_names.is_unique:
        raise ValueError("Observation names must be unique; call adata.obs_names_make_unique() first.")
    library = str(library)
    sname = shapes_name(library, kind)
    shapes = make_shapes(xy, diameter_um, library, index=np.arange(adata.n_obs))
    table = adata.copy()
    table.obs[REGION_KEY] = pd.Categorical([sname] * table.n_obs)
    table.obs[INSTANCE_KEY] = np.arange(table.n_obs)
    table.obs[LIBRARY_KEY] = pd.Categorical([library] * table.n_obs)
    table.obsm[SPATIAL_KEY] = xy
    images = {}
    iname = None
    if image is not None:
        if mpp is None:
            raise ValueError("An image needs its microns per pixel (mpp=).")
        iname = image_name(library)
        images[iname] = make_image(image, mpp, library, offset_um=image_offset_um)
    table.uns["spatial"] = {
        library: {
            "scalefactors": {"microns_per_pixel": 1.0, "spot_diameter_fullres": float(diameter_um)},
            "metadata": {"technology": technology, "kind": kind},
        }
    }
    table = TableModel.parse(table, region=[sname], region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return SpatialData(images=images, shapes={sname: shapes}, tables={TABLE_KEY: table})


def get_table(sdata, table_key: str = TABLE_KEY) -> ad.AnnData:
    """Return the table, or raise naming the tables that exist."""
    if isinstance(sdata, ad.AnnData):
        return sdata
    if table_key == TABLE_KEY and table_key not in sdata.tables and len(sdata.tables) == 1:
        return next(iter(sdata.tables.values()))  # e.g. spatialdata-io's Visium HD table "square_008um"
    if table_key not in sdata.tables:
        raise KeyError(
            f"No table {table_key!r} in the SpatialData object; it has {sorted(sdata.tables)}. "
            "Pass table_key= with one of those, or read the data with a nichekd.io reader."
        )
    return sdata.tables[table_key]


def library_labels(adata: ad.AnnData, library_key: str | None = LIBRARY_KEY) -> pd.Categorical:
    """The library of each observation (see :func:`nichekd._elements.library_labels`)."""
    from ._elements import library_labels as _labels

    return pd.Categorical(_labels(adata, library_key)[1])


def spatial_coords(adata: ad.AnnData, spatial_key: str = SPATIAL_KEY) -> np.ndarray:
    """``(n, 2)`` micron coordinates, with a clear error if missing or not finite."""
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"No coordinates in obsm[{spatial_key!r}]; the table needs (x, y) in microns there "
            "(nichekd.io readers write it)."
        )
    xy = np.asarray(adata.obsm[spatial_key], dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"obsm[{spatial_key!r}] must be (n, 2), got {xy.shape}.")
    if not np.isfinite(xy[:, :2]).all():
        raise ValueError(f"obsm[{spatial_key!r}] has NaN or infinite coordinates; drop those observations.")
    return xy[:, :2]
