"""Physical sizes fixed by a technology and microns per coordinate unit from table metadata."""

from __future__ import annotations

import re
from typing import Any

import anndata as ad
import numpy as np

# Physical sizes fixed by a technology (10x Genomics specifications): a Visium spot is 55 um wide, spots are
# 100 um apart, and Space Ranger's `spot_diameter_fullres` spans a "theoretical 65 um spot" (its docs), which is
# also the circle radius spatialdata-io draws.
VISIUM_SPOT_UM = 55.0

VISIUM_FULLRES_DIAMETER_UM = 65.0

HD_BIN_NAME = re.compile(r"square_(\d{3})um")


def linear_scale(affine: np.ndarray) -> float:
    """Length scale of a 2D affine map (sqrt of the absolute determinant)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(affine, dtype=float)[:2, :2]))))


def _scalefactors(table: ad.AnnData, names: list[str]) -> dict:
    spatial = table.uns.get("spatial", {}) or {}
    for n in names:
        if n in spatial and isinstance(spatial[n], dict):
            return dict(spatial[n].get("scalefactors", {}) or {})
    return {}


def _metadata(table: ad.AnnData, names: list[str]) -> dict:
    spatial = table.uns.get("spatial", {}) or {}
    for n in names:
        if isinstance(spatial.get(n), dict) and isinstance(spatial[n].get("metadata"), dict):
            return dict(spatial[n]["metadata"])
    return {}


def visium_array_scale(array_colrow: np.ndarray, xy: np.ndarray) -> float | None:
    """Microns per unit of ``xy`` from Visium's spot array (``(array_col, array_row)`` per spot): neighbouring
    spots of a row are 100 um apart (2 columns), rows 100 * sqrt(3) / 2 um apart. ``None`` unless the positions
    fit that lattice (median deviation below 5%).
    """
    from scipy.spatial import cKDTree

    arr = np.asarray(array_colrow, dtype=float)[:5000]
    xy = np.asarray(xy, dtype=float)[:5000]
    if len(xy) < 3:
        return None
    _, j = cKDTree(xy).query(xy, k=2)
    um = np.linalg.norm((arr - arr[j[:, 1]]) * [50.0, 50.0 * np.sqrt(3)], axis=1)
    units = np.linalg.norm(xy - xy[j[:, 1]], axis=1)
    ok = (units > 0) & (um > 0)
    if ok.sum() < 2:
        return None
    ratio = um[ok] / units[ok]
    med = float(np.median(ratio))
    return med if np.median(np.abs(ratio / med - 1)) < 0.05 else None


def _visium_array_scale(table: ad.AnnData, rows: np.ndarray, centroids: np.ndarray) -> float | None:
    """:func:`visium_array_scale` from the table's ``obs['array_col']``/``obs['array_row']``; the array says
    Visium where a concatenation dropped the reader's metadata."""
    if not {"array_row", "array_col"} <= set(table.obs.columns):
        return None
    return visium_array_scale(table.obs[["array_col", "array_row"]].to_numpy(dtype=float)[rows], centroids)


def _spaceranger(table: ad.AnnData, names: list[str]) -> bool:
    spatial = table.uns.get("spatial", {}) or {}
    for n in names:
        meta = (spatial.get(n) or {}).get("metadata", {}) if isinstance(spatial.get(n), dict) else {}
        version = meta.get("software_version", "") if isinstance(meta, dict) else ""
        version = version[0] if isinstance(version, np.ndarray | list) and len(version) else version
        if isinstance(version, bytes):
            version = version.decode(errors="ignore")
        if str(version).startswith("spaceranger"):
            return True
    return False


def _shape_size(shapes: Any) -> tuple[float | None, str]:
    """Median width of the shapes in their own units and their form (``"circle"``, ``"square"``, ``"polygon"``)."""
    if "radius" in shapes.columns:
        return float(np.median(np.asarray(shapes["radius"], dtype=float))) * 2.0, "circle"
    geom = shapes.geometry
    if len(geom) == 0:
        return None, "polygon"
    sample = geom.iloc[: min(len(geom), 1000)]
    area = sample.area.to_numpy()
    bounds = sample.bounds.to_numpy()
    box = (bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1])
    square = bool(np.allclose(area, box, rtol=1e-3))
    return float(np.median(np.sqrt(area))), ("square" if square else "polygon")
