"""10x Xenium cells and a post-Xenium H&E: a thin adapter over :func:`spatialdata_io.xenium`.

spatialdata-io reads the cells (circles in microns, scaled to Xenium's morphology pixels in the coordinate
system ``"global"``) and an aligned H&E (``*he_image.ome.tif`` with its ``*he_imagealignment.csv``, registered
to ``"global"`` through the alignment). The adapter adds what nichekd needs and spatialdata-io lacks: by default
it reads only the cells and the H&E (no transcripts, boundaries, labels or morphology images, which nichekd does
not use and which are large), takes an H&E stored elsewhere (``he_image=``, ``alignment=``), validates the files
first, and keeps the section name from ``experiment.xenium`` in ``obs['library']`` (spatialdata-io's element
names are generic).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._checks import (
    ReaderError,
    check_barcodes,
    check_counts,
    check_image_holds_observations,
    check_min_obs,
    parsing,
    read_json,
    require_file,
)
from ._visium import counts_barcodes

# what nichekd reads by default: the cells as circles (the table annotates them) and aligned H&E images
XENIUM_DEFAULTS: dict[str, Any] = {
    "cells_as_circles": True,
    "cells_boundaries": False,
    "nucleus_boundaries": False,
    "cells_labels": False,
    "nucleus_labels": False,
    "transcripts": False,
    "morphology_mip": False,
    "morphology_focus": False,
    "aligned_images": True,
}
# spatialdata-io's pyramid for images it parses (aligned images included)
_IMAGE_MODELS_KWARGS = {"scale_factors": [2, 2, 2, 2], "chunks": (1, 4096, 4096)}


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


def cell_ids(cells: Path) -> pd.Index:
    """Cell ids of a Xenium ``cells.parquet`` (bytes decoded)."""
    with parsing(cells, "a Xenium cell table (parquet)"):
        ids = pd.read_parquet(cells, columns=["cell_id"])["cell_id"]
    return pd.Index([i.decode() if isinstance(i, bytes) else str(i) for i in ids])


def read_xenium(
    path: str | Path,
    *,
    he_image: str | Path | None = None,
    alignment: str | Path | None = None,
    library_id: str | None = None,
    gex_only: bool = True,
    reader_kwargs: Mapping[str, Any] | None = None,
):
    """Read a Xenium output folder (cells) and its post-Xenium H&E with :func:`spatialdata_io.xenium`.

    The result is spatialdata-io's object: cells as circles ``cell_circles`` (annotated by table ``"table"``),
    the H&E as ``he_image``, all registered to ``"global"`` (morphology pixels, ``pixel_size`` um each); nichekd
    functions convert to microns themselves.

    Parameters
    ----------
    path
        Xenium Onboard Analysis output folder (``experiment.xenium``, ``cell_feature_matrix.h5``,
        ``cells.parquet``, ``cells.zarr.zip``). An H&E in it named ``*he_image.ome.tif``, with
        ``*he_imagealignment.csv`` beside it, is found by spatialdata-io.
    he_image
        An H&E image stored elsewhere (OME-TIFF, TIFF); read with :func:`spatialdata_io.xenium_aligned_image`
        as ``he_image``. Without it and without one in ``path``, the cells have no image.
    alignment
        Xenium Explorer's alignment CSV of ``he_image``, a 3x3 affine from H&E pixels to morphology pixels.
        Without it the H&E is taken as already aligned to the morphology pixels.
    library_id
        Section name stored in ``obs['library']``; defaults to ``region_name`` in ``experiment.xenium``, else
        the folder name.
    gex_only
        Keep only gene expression features (drop control probes and codewords).
    reader_kwargs
        Keyword arguments of :func:`spatialdata_io.xenium` replacing the defaults in ``XENIUM_DEFAULTS`` (e.g.
        ``transcripts=True``, ``cells_boundaries=True``).

    Returns
    -------
    SpatialData as written by spatialdata-io, plus ``obs['library']``.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_xenium("outs/", he_image="he.ome.tif", alignment="he_imagealignment.csv")  # doctest: +SKIP
    """
    import spatialdata_io

    path = require_file(path, "Xenium output folder")
    specs = read_json(path / "experiment.xenium", "Xenium experiment file (experiment.xenium)")
    matrix_src = require_file(path / "cell_feature_matrix.h5", "Xenium cell-feature matrix")
    cells_src = require_file(
        path / "cells.parquet", "Xenium cell table", "Xenium Onboard Analysis writes it."
    )
    require_file(
        path / "cells.zarr.zip",
        "Xenium cell summary (cells.zarr.zip)",
        "spatialdata-io reads the cell ids from it; Xenium Onboard Analysis writes it.",
    )
    check_barcodes(counts_barcodes(matrix_src), cell_ids(cells_src), matrix_src, cells_src)
    if alignment is not None and he_image is None:
        raise ValueError("alignment= was given without he_image=; pass the H&E it aligns.")
    if alignment is not None:
        read_alignment(alignment)  # validated here: spatialdata-io would take any table as the affine
    if he_image is not None:
        he_image = require_file(he_image, "H&E image")
    options = {**XENIUM_DEFAULTS, "gex_only": gex_only, **dict(reader_kwargs or {})}
    sdata = spatialdata_io.xenium(path, **options)
    if he_image is not None:
        sdata.images["he_image"] = spatialdata_io.xenium_aligned_image(
            he_image,
            alignment,
            image_models_kwargs=options.get("image_models_kwargs", _IMAGE_MODELS_KWARGS),
            rgba=True,
        )
    table = sdata.tables["table"]
    check_counts(table.X, matrix_src)
    check_min_obs(table.n_obs, matrix_src)
    library = str(library_id or specs.get("region_name") or path.resolve().name)
    table.obs["library"] = pd.Categorical([library] * table.n_obs)
    # spatialdata-io keeps the cells in microns (scaled to morphology pixels by their transform); recorded in
    # the table because sdata.attrs (the reader's name, which says so) does not survive spatialdata.concatenate
    table.uns.setdefault("spatial", {})[library] = {
        "scalefactors": {"microns_per_pixel": 1.0},
        "metadata": {"technology": "xenium"},
    }
    check_image_holds_observations(sdata, "table", he_image or path)
    return sdata
