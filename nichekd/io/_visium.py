"""10x Visium (Space Ranger output folders) into the standard layout."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd

from .._layout import build_library
from ._checks import (
    check_barcodes,
    check_counts,
    check_min_obs,
    check_on_image,
    check_unique_ids,
    find_first,
    is_blank,
    parsing,
    positive_field,
    read_image,
    read_json,
    require_file,
)

VISIUM_SPOT_UM = 55.0
_POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


def read_10x_counts(folder: Path, counts: str, what: str = "count matrix") -> tuple[ad.AnnData, Path]:
    """A Space Ranger ``{counts}_feature_bc_matrix`` (``.h5`` or mtx folder) with gene symbols as var names."""
    import scanpy as sc

    if counts not in ("filtered", "raw"):
        raise ValueError(f"counts must be 'filtered' or 'raw', got {counts!r}.")
    other = "raw" if counts == "filtered" else "filtered"
    try:
        src = find_first(
            folder,
            [
                f"{counts}_feature_bc_matrix.h5",
                f"*{counts}_feature_bc_matrix.h5",
                f"{counts}_feature_bc_matrix",
            ],
            f"{counts} {what}",
        )
    except FileNotFoundError as err:
        has_other = list(folder.glob(f"*{other}_feature_bc_matrix*"))
        hint = f" This folder has a {other} matrix: pass counts={other!r}." if has_other else ""
        raise FileNotFoundError(f"{err}{hint}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Variable names are not unique"
        if src.is_dir():
            for name in ("matrix.mtx.gz", "barcodes.tsv.gz", "features.tsv.gz"):
                require_file(
                    src / name, f"part of the {counts} {what}", "A Space Ranger mtx folder has all three."
                )
            with parsing(src, "a Space Ranger mtx folder (matrix.mtx.gz, barcodes.tsv.gz, features.tsv.gz)"):
                adata = sc.read_10x_mtx(src, var_names="gene_symbols", make_unique=False)
        else:
            with parsing(src, "a 10x feature-barcode matrix (HDF5 .h5)"):
                adata = sc.read_10x_h5(src)
    adata.var_names_make_unique()
    adata.var_names.name = None
    return adata, src


def read_positions(spatial: Path) -> tuple[pd.DataFrame, Path]:
    """Spot positions (``tissue_positions.parquet``/``.csv`` or ``tissue_positions_list.csv``) by barcode."""
    src = find_first(
        spatial,
        ["tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv"],
        "spot positions file",
        "Space Ranger writes it to spatial/.",
    )
    with parsing(src, "a Space Ranger spot positions table (parquet or CSV)"):
        if src.suffix == ".parquet":
            df = pd.read_parquet(src)
        elif src.name == "tissue_positions_list.csv":  # Space Ranger 1.x: no header
            df = pd.read_csv(src, header=None, names=_POSITION_COLUMNS)
        else:
            df = pd.read_csv(src)
    missing = [c for c in _POSITION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"The positions file {src} lacks the columns {missing}; expected {_POSITION_COLUMNS}."
        )
    df = df.set_index("barcode")
    df.index = df.index.astype(str)
    check_unique_ids(df.index, src)
    return df, src


def choose_image(spatial: Path, image: str) -> tuple[np.ndarray, str, Path]:
    """The requested (or best) of hires/lowres; blank placeholders are skipped with a warning."""
    if image not in ("hires", "lowres", "auto"):
        raise ValueError(f"image must be 'hires', 'lowres' or 'auto', got {image!r}.")
    order = ["lowres", "hires"] if image == "lowres" else ["hires", "lowres"]
    found = {
        k: spatial / f"tissue_{k}_image.png" for k in order if (spatial / f"tissue_{k}_image.png").exists()
    }
    if not found:
        require_file(spatial / "tissue_hires_image.png", "H&E image (tissue_hires/lowres_image.png)")
    blank = []
    for kind, path in found.items():
        arr = read_image(path, f"{kind} H&E image")
        if not is_blank(arr):
            if blank or (image != "auto" and kind != image):
                warnings.warn(
                    f"Using the {kind} image: {', '.join(str(b) for b in blank) or image + ' is missing'}"
                    f"{' is blank (near-constant pixels)' if blank else ''}.",
                    UserWarning,
                    stacklevel=3,
                )
            return arr, kind, path
        blank.append(path)
    raise ValueError(
        f"Every H&E image is blank (near-constant pixels): {blank}. Provide the real tissue image."
    )


def spaceranger_library(
    adata: ad.AnnData,
    counts_src: Path,
    positions: pd.DataFrame,
    positions_src: Path,
    arr: np.ndarray,
    image_src: Path,
    scalef: float,
    mpp_full: float,
    *,
    library: str,
    in_tissue_only: bool,
    diameter_um: float,
    technology: str,
):
    """Shared tail of the Visium and Visium HD readers: validate, subset, convert to microns, build."""
    if not np.isfinite(mpp_full) or mpp_full <= 0:
        raise ValueError(f"mpp must be a positive number of microns per full-res pixel, got {mpp_full!r}.")
    check_counts(adata.X, counts_src)
    check_barcodes(adata.obs_names, positions.index, counts_src, positions_src)
    pos = positions.loc[adata.obs_names]
    if in_tissue_only:
        keep = pos["in_tissue"].to_numpy().astype(bool)
        adata, pos = adata[keep].copy(), pos[keep]
    check_min_obs(adata.n_obs, f"{counts_src} (in_tissue_only={in_tissue_only})")
    xy_full = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
    check_on_image(xy_full * scalef, arr.shape, image_src, tol_px=diameter_um / mpp_full * scalef / 2)
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = pos[col].to_numpy().astype(int)
    return build_library(
        adata,
        library=library,
        xy_um=xy_full * mpp_full,
        diameter_um=diameter_um,
        kind="spot",
        technology=technology,
        image=arr,
        mpp=mpp_full / scalef,
    )


def read_visium(
    path: str | Path,
    *,
    library_id: str | None = None,
    counts: Literal["filtered", "raw"] = "filtered",
    image: Literal["hires", "lowres", "auto"] = "auto",
    in_tissue_only: bool = True,
    mpp: float | None = None,
):
    """Read a 10x Visium Space Ranger output folder into the standard layout.

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder (the count matrix beside a ``spatial/`` folder).
    library_id
        Section id; defaults to the folder name.
    counts
        ``"filtered"`` (spots under tissue) or ``"raw"`` (all barcodes) matrix, as ``.h5`` or mtx folder.
    image
        ``"hires"``, ``"lowres"`` or ``"auto"`` (hires unless it is blank). A blank placeholder image is
        skipped with a warning for the other one; all images blank raises.
    in_tissue_only
        Keep only spots flagged ``in_tissue`` (``obs['in_tissue']`` is kept either way).
    mpp
        Microns per **full-resolution** pixel; by default from the 55 um spot diameter
        (``55 / spot_diameter_fullres``).

    Returns
    -------
    SpatialData with ``{library}_he``, ``{library}_spots`` (55 um circles, microns) and ``table`` (raw counts).

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_visium("outs/", image="hires")  # doctest: +SKIP
    >>> sdata.tables["table"].obs["in_tissue"].all()  # doctest: +SKIP
    True
    """
    path = require_file(path, "Space Ranger output folder")
    spatial = require_file(path / "spatial", "spatial/ folder of the Space Ranger output")
    adata, counts_src = read_10x_counts(path, counts)
    positions, positions_src = read_positions(spatial)
    check_barcodes(adata.obs_names, positions.index, counts_src, positions_src)  # fail before reading images
    sf = read_json(spatial / "scalefactors_json.json", "Visium scale factors")
    arr, kind, image_src = choose_image(spatial, image)
    key = f"tissue_{kind}_scalef"
    if key not in sf or "spot_diameter_fullres" not in sf:
        raise KeyError(f"{spatial / 'scalefactors_json.json'} lacks {key!r} or 'spot_diameter_fullres'.")
    sf_path = spatial / "scalefactors_json.json"
    sf[key] = positive_field(sf, key, sf_path)
    if mpp is None:
        mpp = VISIUM_SPOT_UM / positive_field(sf, "spot_diameter_fullres", sf_path)
    return spaceranger_library(
        adata,
        counts_src,
        positions,
        positions_src,
        arr,
        image_src,
        float(sf[key]),
        float(mpp),
        library=str(library_id or path.resolve().name),
        in_tissue_only=in_tissue_only,
        diameter_um=VISIUM_SPOT_UM,
        technology="visium",
    )
