"""The annotation table of a SpatialData object and what its rows say (library, coordinates)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from .keys import LIBRARY_KEY, SPATIAL_KEY, TABLE_KEY
from .validate import check_key


def get_table(sdata, table_key: str = TABLE_KEY) -> ad.AnnData:
    """Return the table, or raise naming the tables that exist (``table_key`` must be a string)."""
    check_key("table_key", table_key)
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
    """The library of each observation (see :func:`library_column`)."""

    return pd.Categorical(library_column(adata, library_key)[1])


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


def table_region_keys(table: ad.AnnData) -> tuple[str | None, str | None]:
    attrs = table.uns.get("spatialdata_attrs", {}) or {}
    return attrs.get("region_key"), attrs.get("instance_key")


def library_column(table: ad.AnnData, library_key: str | None = None) -> tuple[str | None, np.ndarray]:
    """``(column used, library of each row)``.

    ``library_key=None`` (or the default ``"library"`` where the table has no such column) uses
    ``obs['library']`` when present, else the table's region column (one library per annotated element), else a
    single library called ``"library"``. ``library_key`` must be a string or None.
    """
    check_key("library_key", library_key, optional=True)
    if library_key == LIBRARY_KEY and library_key not in table.obs:
        library_key = None
    if library_key is not None:
        if library_key not in table.obs:
            raise KeyError(
                f"No column {library_key!r} in obs; pass library_key= with a column naming each observation's "
                f"section (obs has {list(table.obs.columns)[:20]}), or library_key=None for one per element."
            )
        col = table.obs[library_key]
        if col.isna().any():
            raise ValueError(f"obs[{library_key!r}] has missing values; every observation needs a library.")
        return library_key, col.astype(str).to_numpy()
    if LIBRARY_KEY in table.obs:
        return library_column(table, LIBRARY_KEY)
    region_key, _ = table_region_keys(table)
    if region_key is not None and region_key in table.obs:
        return library_column(table, region_key)
    return None, np.full(table.n_obs, "library", dtype=object)
