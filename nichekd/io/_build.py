"""How nichekd's own readers and the simulator lay out a section; every function reads any layout.

nichekd functions find elements, coordinates and units through :mod:`nichekd._core.spatial`, so they work on objects
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

from .._core.image import as_rgb_cyx
from .._core.keys import (
    INSTANCE_KEY,
    LIBRARY_KEY,
    REGION_KEY,
    SPATIAL_KEY,
    TABLE_KEY,
    image_name,
    shapes_name,
)

# Smallest pyramid level kept: below this many pixels on the long side a further level adds nothing.
MIN_PYRAMID_SIZE = 256


def pyramid_scale_factors(shape_yx: Sequence[int], min_size: int = MIN_PYRAMID_SIZE) -> list[int]:
    """Factor-2 pyramid steps until the long side drops below ``min_size`` pixels."""
    factors: list[int] = []
    size = max(shape_yx)
    while size // 2 >= min_size:
        factors.append(2)
        size //= 2
    return factors


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
