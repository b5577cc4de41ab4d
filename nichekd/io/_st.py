"""Legacy Spatial Transcriptomics (ST, 100 um spots on a 200 um grid) into the standard layout."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

from ..io._build import build_library
from ._checks import (
    check_barcodes,
    check_counts,
    check_image,
    check_min_obs,
    check_on_image,
    parsing,
    read_image,
    require_file,
)

ST_SPOT_UM = 100.0
ST_PITCH_UM = 200.0
_ALIGNMENT_COLUMNS = ["x", "y", "pixel_x", "pixel_y"]


def grid_pitch_px(xy_px: np.ndarray) -> float:
    """Median nearest-neighbour distance: the spot pitch in pixels of a regular grid."""
    if len(xy_px) < 2:
        raise ValueError("At least 2 spots are needed to estimate the spot spacing; pass mpp= instead.")
    d, _ = cKDTree(xy_px).query(xy_px, k=2)
    return float(np.median(d[:, 1]))


def _read_alignment(spots: Path) -> pd.DataFrame:
    with parsing(spots, "a tab-separated ST spot alignment table"):
        df = pd.read_csv(spots, sep="\t")
    missing = [c for c in _ALIGNMENT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"The spot alignment table {spots} lacks the columns {missing}; expected a tab-separated file with "
            "x, y, pixel_x, pixel_y (and selected) as written by the ST spot detector."
        )
    df.index = pd.Index([f"{int(round(x))}x{int(round(y))}" for x, y in zip(df["x"], df["y"], strict=True)])
    if not df.index.is_unique:
        raise ValueError(f"The spot alignment table {spots} has duplicate (x, y) array positions.")
    return df


def read_st(
    counts: str | Path,
    spots: str | Path,
    image: str | Path,
    *,
    library_id: str | None = None,
    mpp: float | None = None,
    selected_only: bool = True,
):
    """Read one legacy Spatial Transcriptomics section into the standard layout.

    nichekd's own reader: spatialdata-io has no reader for legacy ST (count TSV + spot-detector alignment).

    Parameters
    ----------
    counts
        Tab-separated spots x genes counts; the row index is ``"<x>x<y>"`` (array coordinates).
    spots
        Spot alignment table (tab-separated: ``x y [new_x new_y] pixel_x pixel_y selected``); ``pixel_x`` and
        ``pixel_y`` are the column and row of the spot centre in ``image``.
    image
        The H&E image (JPEG, PNG or TIFF).
    library_id
        Section id; defaults to the counts file name without extensions.
    mpp
        Microns per image pixel; by default from the 200 um spot grid (median nearest-neighbour spacing of
        all spots in the alignment table).
    selected_only
        Keep only spots with ``selected == 1`` (under tissue).

    Returns
    -------
    SpatialData with ``{library}_he``, ``{library}_spots`` (100 um circles, microns) and ``table``.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_st("MOB1.tsv.gz", "alignment_table_MOB1.tsv", "MOB1.jpg")  # doctest: +SKIP
    """
    counts = require_file(counts, "ST count matrix (spots x genes, tab-separated)")
    spots = require_file(spots, "ST spot alignment table")
    image = require_file(image, "H&E image")
    if mpp is not None and (not np.isfinite(mpp) or mpp <= 0):
        raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}.")
    with parsing(counts, "a tab-separated ST count matrix (spots x genes, optionally gzipped)"):
        table = pd.read_csv(counts, sep="\t", index_col=0)
    table.index = table.index.astype(str)
    if not table.index.is_unique:
        raise ValueError(f"The count matrix {counts} has duplicate spot ids.")
    try:
        x = table.to_numpy(dtype=float)
    except ValueError as err:
        raise ValueError(f"The count matrix {counts} has non-numeric values ({err}).") from err
    check_counts(x, counts)
    align = _read_alignment(spots)
    if selected_only and "selected" not in align.columns:
        raise KeyError(f"The alignment table {spots} has no 'selected' column; pass selected_only=False.")
    # ST count files list a few spots the aligner did not place (off the frame); a mostly disjoint pair of
    # files is a mix-up
    check_barcodes(table.index, align.index, counts, spots, max_missing=0.5)
    keep = align.index.intersection(table.index, sort=False)
    if selected_only:
        keep = keep[align.loc[keep, "selected"].to_numpy() == 1]
    check_min_obs(len(keep), f"{counts} joined with {spots}")
    arr = read_image(image, "H&E image")
    check_image(arr, image)
    xy_px = align.loc[keep, ["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    if mpp is None:
        mpp = ST_PITCH_UM / grid_pitch_px(align[["pixel_x", "pixel_y"]].to_numpy(dtype=float))
    check_on_image(xy_px, arr.shape, image, tol_px=ST_SPOT_UM / mpp / 2)
    adata = ad.AnnData(
        X=sparse.csr_matrix(table.loc[keep].to_numpy(dtype=np.float32)),
        obs=pd.DataFrame(
            {
                "array_x": align.loc[keep, "x"].to_numpy(),
                "array_y": align.loc[keep, "y"].to_numpy(),
                "selected": align.loc[keep, "selected"].to_numpy().astype(int)
                if "selected" in align.columns
                else 1,
            },
            index=pd.Index(keep),
        ),
        var=pd.DataFrame(index=pd.Index(table.columns.astype(str))),
    )
    adata.var_names_make_unique()
    library = str(library_id or counts.name.split(".")[0])
    return build_library(
        adata,
        library=library,
        xy_um=xy_px * mpp,
        diameter_um=ST_SPOT_UM,
        kind="spot",
        technology="st",
        image=arr,
        mpp=float(mpp),
    )
