"""AnnData + image pairs (HEST-1k samples, exported crops) into the standard layout."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np

from .._core.units import VISIUM_SPOT_UM
from ..io._build import build_library
from ._checks import (
    check_counts,
    check_image,
    check_min_obs,
    check_on_image,
    parsing,
    read_image,
    read_json,
    require_file,
)

XENIUM_CELL_UM = 10.0
# HEST-1k metadata keys holding microns per pixel of the full-resolution image, most trusted first
_MPP_KEYS = ("pixel_size_um_embedded", "pixel_size_um_estimated", "pixel_size_um", "mpp")


def _positions(adata: ad.AnnData, spatial_key: str | tuple[str, str], xy_order: str, source) -> np.ndarray:
    """``(n, 2)`` pixel positions as (column, row) from ``obsm[key]`` or a pair of ``obs`` columns."""
    if xy_order not in ("xy", "yx"):
        raise ValueError(f"xy_order must be 'xy' (column, row) or 'yx' (row, column), got {xy_order!r}.")
    if isinstance(spatial_key, str):
        if spatial_key not in adata.obsm:
            raise KeyError(
                f"{source} has no obsm[{spatial_key!r}] (obsm keys: {list(adata.obsm)}, obs columns: "
                f"{list(adata.obs.columns)[:10]}); pass spatial_key= an obsm key or a pair of obs columns."
            )
        pos = np.asarray(adata.obsm[spatial_key], dtype=float)[:, :2]
    else:
        cols = [c for c in spatial_key if c not in adata.obs]
        if len(spatial_key) != 2 or cols:
            raise KeyError(
                f"{source} lacks the obs columns {cols or spatial_key}; obs has {list(adata.obs.columns)}."
            )
        pos = adata.obs[list(spatial_key)].to_numpy(dtype=float)
    if not np.isfinite(pos).all():
        raise ValueError(
            f"The positions in {source} contain NaN or infinite values; drop those observations."
        )
    return pos if xy_order == "xy" else pos[:, ::-1].copy()


def read_anndata_image(
    adata: ad.AnnData | str | Path,
    image: str | Path,
    *,
    mpp: float,
    spatial_key: str | tuple[str, str] = "spatial",
    xy_order: Literal["xy", "yx"] = "xy",
    diameter_um: float,
    kind: Literal["spot", "cell"] = "spot",
    technology: str = "unknown",
    library_id: str | None = None,
    layer: str | None = None,
):
    """Pair an AnnData of counts with pixel positions and an H&E image, into the standard layout.

    nichekd's own reader: spatialdata-io has no reader for an AnnData plus a separate image (its ``generic``
    reader takes an image or shapes alone).

    Parameters
    ----------
    adata
        AnnData (or ``.h5ad`` path) with raw counts and pixel positions of each observation in ``image``.
    image
        The H&E image file.
    mpp
        Microns per pixel of ``image``.
    spatial_key
        ``obsm`` key of the positions, or a pair of ``obs`` columns.
    xy_order
        ``"xy"`` if the positions are (column, row), ``"yx"`` if (row, column).
    diameter_um
        Spot or cell diameter in microns.
    kind
        ``"spot"`` or ``"cell"``.
    technology
        Recorded in ``uns['spatial'][library_id]['metadata']['technology']``.
    library_id
        Section id; defaults to the file name (or ``"library"`` for an in-memory AnnData).
    layer
        Take the counts from ``layers[layer]`` instead of ``X``.

    Returns
    -------
    SpatialData in the standard layout.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_anndata_image("bins.h5ad", "he.png", mpp=2.0, diameter_um=8)  # doctest: +SKIP
    """
    source = adata if not isinstance(adata, ad.AnnData) else "the AnnData"
    if not isinstance(adata, ad.AnnData):
        path = require_file(adata, "AnnData file (.h5ad)")
        with parsing(path, "an AnnData file (.h5ad, HDF5)"):
            adata = ad.read_h5ad(path)
        library_id = library_id or path.name.split(".")[0]
    image = require_file(image, "H&E image")
    if mpp is None or not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"mpp must be a positive number of microns per image pixel, got {mpp!r}.")
    if diameter_um is None or not np.isfinite(diameter_um) or diameter_um <= 0:
        raise ValueError(f"diameter_um must be a positive number of microns, got {diameter_um!r}.")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"{source} has no layers[{layer!r}]; it has {list(adata.layers)}.")
    counts = adata.X if layer is None else adata.layers[layer]
    check_counts(counts, source)
    check_min_obs(adata.n_obs, source)
    xy_px = _positions(adata, spatial_key, xy_order, source)
    arr = read_image(image, "H&E image")
    check_image(arr, image)
    check_on_image(xy_px, arr.shape, image, tol_px=diameter_um / mpp / 2)
    out = ad.AnnData(X=counts.copy(), obs=adata.obs.copy(), var=adata.var.copy())
    out.obs_names_make_unique()
    out.var_names_make_unique()
    return build_library(
        out,
        library=str(library_id or "library"),
        xy_um=xy_px * mpp,
        diameter_um=float(diameter_um),
        kind=kind,
        technology=technology,
        image=arr,
        mpp=float(mpp),
    )


def hest_mpp(meta: dict, source, cell_diameter_um: float = XENIUM_CELL_UM) -> float:
    """Microns per pixel from HEST metadata; falls back to ``cell_diameter`` (pixels) with a warning."""
    for key in _MPP_KEYS:
        value = meta.get(key)
        if value is not None and np.isfinite(float(value)) and float(value) > 0:
            return float(value)
    if meta.get("cell_diameter"):
        mpp = cell_diameter_um / float(meta["cell_diameter"])
        warnings.warn(
            f"{source} has no pixel size ({', '.join(_MPP_KEYS)}); assuming its cell_diameter "
            f"({meta['cell_diameter']} px) is a {cell_diameter_um:g} um cell, i.e. {mpp:g} um/px. "
            "Pass mpp= if the scan's resolution is known.",
            UserWarning,
            stacklevel=3,
        )
        return mpp
    raise ValueError(
        f"{source} records no pixel size (keys {_MPP_KEYS}); pass mpp= (microns per image pixel)."
    )


def read_hest(
    h5ad: str | Path,
    image: str | Path,
    *,
    metadata: str | Path | None = None,
    library_id: str | None = None,
    mpp: float | None = None,
    diameter_um: float | None = None,
    xy_order: Literal["xy", "yx"] | None = None,
):
    """Read a HEST-1k style sample (``.h5ad`` + H&E image + metadata JSON) into the standard layout.

    nichekd's own reader: spatialdata-io has no HEST-1k reader (the ``hest`` package has no spatialdata output).

    Positions come from ``obsm['spatial']`` as (column, row) pixels (HEST-1k), or else from
    ``obs['x_pixel']``/``obs['y_pixel']``, which in exported HEST samples (e.g. DeepSpot's) hold the image
    **row** and **column** respectively.

    Parameters
    ----------
    h5ad
        The sample's AnnData file (raw counts in ``X``).
    image
        The sample's H&E image (JPEG, PNG or TIFF).
    metadata
        The sample's JSON metadata; defaults to ``<h5ad stem>.json`` beside ``h5ad`` if present.
    library_id
        Section id; defaults to the ``sample`` field of the metadata, else the file name.
    mpp
        Microns per image pixel; overrides the metadata (``pixel_size_um_embedded``, then
        ``pixel_size_um_estimated``; without them, a ``cell_diameter`` in pixels taken as a 10 um cell).
    diameter_um
        Spot/cell diameter in microns; 10 (cells) for Xenium-like samples, 55 (spots) for Visium.
    xy_order
        Override the position convention: ``"xy"`` (column, row) or ``"yx"`` (row, column).

    Returns
    -------
    SpatialData in the standard layout.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_hest("NCBI858.h5ad", "NCBI858.jpg")  # doctest: +SKIP
    """
    h5ad = require_file(h5ad, "HEST AnnData file (.h5ad)")
    image = require_file(image, "H&E image")
    if metadata is None and h5ad.with_suffix(".json").exists():
        metadata = h5ad.with_suffix(".json")
    meta = read_json(metadata, "HEST metadata") if metadata is not None else {}
    tech = str(meta.get("st_technology", "xenium" if "cell_diameter" in meta else "visium")).lower()
    is_cells = "xenium" in tech or "cell_diameter" in meta
    kind = "cell" if is_cells else "spot"
    if diameter_um is None:
        diameter_um = XENIUM_CELL_UM if is_cells else VISIUM_SPOT_UM
    if mpp is None:
        mpp = hest_mpp(meta, metadata or h5ad)
    with parsing(h5ad, "a HEST AnnData file (.h5ad, HDF5)"):
        adata = ad.read_h5ad(h5ad)
    if "spatial" in adata.obsm:
        key, order = "spatial", "xy"
    elif {"x_pixel", "y_pixel"} <= set(adata.obs.columns):
        key, order = ("x_pixel", "y_pixel"), "yx"  # x_pixel is the row, y_pixel the column
    else:
        raise KeyError(
            f"{h5ad} has neither obsm['spatial'] nor obs['x_pixel'/'y_pixel'] positions; use "
            "nk.io.read_anndata_image with spatial_key= naming where they are."
        )
    return read_anndata_image(
        adata,
        image,
        mpp=mpp,
        spatial_key=key,
        xy_order=xy_order or order,
        diameter_um=diameter_um,
        kind=kind,
        technology=tech,
        library_id=str(library_id or meta.get("sample") or h5ad.name.split(".")[0]),
    )
