"""10x Xenium cells on a post-Xenium H&E into the standard layout.

Reads the few files a cell-level analysis needs directly (``experiment.xenium``, ``cell_feature_matrix.h5``,
``cells.parquet``) in Xenium Ranger's on-disk format; spatialdata-io's reader also requires the morphology
images, boundaries and transcripts. The H&E is kept in its own pixel frame (an axis-aligned
``Scale(mpp)``), and the cells are mapped into it through Xenium's alignment matrix, so that patches are cut
from the H&E without resampling it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .._layout import build_library
from ._checks import (
    ReaderError,
    check_barcodes,
    check_counts,
    check_image,
    check_min_obs,
    check_on_image,
    parsing,
    read_image,
    read_json,
    require_file,
)

XENIUM_PIXEL_UM = 0.2125
XENIUM_CELL_UM = 10.0


def read_alignment(alignment: str | Path) -> np.ndarray:
    """The 3x3 affine of a Xenium ``*_imagealignment.csv``: H&E pixels (x, y) -> morphology pixels (x, y)."""
    alignment = require_file(alignment, "H&E alignment matrix (3x3 CSV from Xenium Explorer)")
    try:
        with parsing(alignment, "a 3x3 alignment matrix (CSV)"):
            table = pd.read_csv(alignment, header=None)
        matrix = table.to_numpy(dtype=float)
    except ValueError as err:
        if isinstance(err, ReaderError):
            raise
        raise ValueError(f"The alignment file {alignment} is not a numeric 3x3 CSV ({err}).") from err
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all():
        raise ValueError(
            f"The alignment file {alignment} must hold a finite 3x3 matrix, got shape {matrix.shape}."
        )
    if not np.allclose(matrix[2], [0, 0, 1], atol=1e-6):
        raise ValueError(
            f"The alignment in {alignment} is projective (last row {matrix[2]}); only affine is supported."
        )
    if abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
        raise ValueError(f"The alignment in {alignment} is singular; export it again from Xenium Explorer.")
    return matrix


def _cells(path: Path) -> pd.DataFrame:
    src = require_file(path / "cells.parquet", "Xenium cell table", "Xenium Ranger writes cells.parquet.")
    with parsing(src, "a Xenium cell table (parquet)"):
        df = pd.read_parquet(src)
    missing = [c for c in ("cell_id", "x_centroid", "y_centroid") if c not in df.columns]
    if missing:
        raise ValueError(f"{src} lacks the columns {missing}.")
    ids = df["cell_id"]
    df.index = pd.Index([i.decode() if isinstance(i, bytes) else str(i) for i in ids])
    return df.drop(columns="cell_id")


def read_xenium(
    path: str | Path,
    *,
    he_image: str | Path | None = None,
    alignment: str | Path | None = None,
    library_id: str | None = None,
    diameter_um: float | None = None,
    gex_only: bool = True,
):
    """Read a Xenium output folder (cells) and its post-Xenium H&E into the standard layout.

    Parameters
    ----------
    path
        Xenium Ranger output folder (``experiment.xenium``, ``cell_feature_matrix.h5``, ``cells.parquet``).
    he_image
        The H&E image (OME-TIFF, TIFF, PNG, JPEG); without it the library has cells but no image.
    alignment
        Xenium Explorer's alignment CSV, a 3x3 affine from H&E pixels to morphology pixels
        (``pixel_size`` um each, 0.2125). Without it the H&E is taken as already aligned at ``pixel_size``.
    library_id
        Section id; defaults to the ``region_name`` in ``experiment.xenium``, else the folder name.
    diameter_um
        Cell circle diameter; defaults to the median of ``2 sqrt(cell_area / pi)``, else 10 um.
    gex_only
        Keep only gene expression features (drop control probes and codewords).

    Returns
    -------
    SpatialData with ``{library}_he``, ``{library}_cells`` and ``table``; positions are microns in the H&E's
    frame (``obsm['spatial']``), Xenium's own micron positions are kept in ``obsm['spatial_xenium']``.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_xenium("outs/", he_image="he.ome.tif", alignment="he_imagealignment.csv")  # doctest: +SKIP
    """
    import scanpy as sc

    path = require_file(path, "Xenium output folder")
    specs = read_json(path / "experiment.xenium", "Xenium experiment file (experiment.xenium)")
    pixel_um = float(specs.get("pixel_size", XENIUM_PIXEL_UM))
    matrix_src = require_file(path / "cell_feature_matrix.h5", "Xenium cell-feature matrix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with parsing(matrix_src, "a 10x cell-feature matrix (HDF5 .h5)"):
            adata = sc.read_10x_h5(matrix_src, gex_only=gex_only)
    adata.var_names_make_unique()
    check_counts(adata.X, matrix_src)
    cells = _cells(path)
    check_barcodes(adata.obs_names, cells.index, matrix_src, path / "cells.parquet")
    cells = cells.loc[adata.obs_names]
    check_min_obs(adata.n_obs, matrix_src)
    xy_xenium = cells[["x_centroid", "y_centroid"]].to_numpy(dtype=float)
    if diameter_um is None:
        area = cells["cell_area"].to_numpy(dtype=float) if "cell_area" in cells else np.array([np.nan])
        diameter_um = (
            float(np.nanmedian(2 * np.sqrt(area / np.pi))) if np.isfinite(area).any() else XENIUM_CELL_UM
        )
    arr, mpp, xy_um = None, None, xy_xenium
    if alignment is not None and he_image is None:
        raise ValueError("alignment= was given without he_image=; pass the H&E it aligns.")
    if he_image is not None:
        he_image = Path(he_image)
        matrix = read_alignment(alignment) if alignment is not None else np.eye(3)
        arr = read_image(he_image, "H&E image")
        check_image(arr, he_image)
        # H&E pixel -> Xenium pixel is `matrix`; its area scale gives the H&E resolution
        mpp = pixel_um * float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
        xen_px = np.c_[xy_xenium / pixel_um, np.ones(len(xy_xenium))]
        he_px = (np.linalg.inv(matrix) @ xen_px.T).T[:, :2]
        check_on_image(he_px, arr.shape, he_image, tol_px=diameter_um / mpp / 2)
        xy_um = he_px * mpp
    for col in ("cell_area", "nucleus_area", "transcript_counts", "total_counts"):
        if col in cells:
            adata.obs[col] = cells[col].to_numpy()
    adata.obsm["spatial_xenium"] = xy_xenium
    library = str(library_id or specs.get("region_name") or path.resolve().name)
    return build_library(
        adata,
        library=library,
        xy_um=xy_um,
        diameter_um=diameter_um,
        kind="cell",
        technology="xenium",
        image=arr,
        mpp=mpp,
    )
