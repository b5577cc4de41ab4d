"""10x Visium HD (Space Ranger binned outputs) into the standard layout.

Reads the files of one bin size directly (``binned_outputs/square_{bin:03d}um/``: the count matrix and
``spatial/tissue_positions.parquet``, ``scalefactors_json.json``, ``tissue_{hires,lowres}_image.png``), which
is all a bin-level analysis needs; spatialdata-io's reader also requires ``feature_slice.h5`` and the
segmentation outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ._checks import check_image, positive_field, read_image, read_json, require_file
from ._visium import choose_image, read_10x_counts, read_positions, spaceranger_library


def read_visium_hd(
    path: str | Path,
    *,
    bin_size: int = 8,
    library_id: str | None = None,
    counts: Literal["filtered", "raw"] = "filtered",
    image: Literal["hires", "lowres", "auto"] = "auto",
    fullres_image: str | Path | None = None,
    in_tissue_only: bool = True,
    mpp: float | None = None,
):
    """Read one bin size of a 10x Visium HD Space Ranger output into the standard layout.

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder (holding ``binned_outputs/``) or one ``square_XXXum`` folder.
    bin_size
        Bin side in microns (2, 8 or 16); selects ``binned_outputs/square_{bin_size:03d}um``.
    library_id
        Section id; defaults to the ``outs`` folder's parent name (the run name).
    counts
        ``"filtered"`` or ``"raw"`` matrix (``.h5`` or mtx folder).
    image
        ``"hires"``, ``"lowres"`` or ``"auto"``; blank placeholders are skipped with a warning.
    fullres_image
        Optional full-resolution H&E (the microscope image given to Space Ranger); used instead of
        hires/lowres, at the scale of ``pxl_*_in_fullres``.
    in_tissue_only
        Keep only bins flagged ``in_tissue``.
    mpp
        Microns per full-resolution pixel; defaults to ``microns_per_pixel`` of the scale factors.

    Returns
    -------
    SpatialData with ``{library}_he``, ``{library}_spots`` (bins as circles of diameter ``bin_size`` um) and
    ``table``.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_visium_hd("outs/", bin_size=8)  # doctest: +SKIP
    """
    path = require_file(path, "Visium HD Space Ranger output folder")
    folder = (
        path if path.name.startswith("square_") else path / "binned_outputs" / f"square_{int(bin_size):03d}um"
    )
    if not folder.is_dir():
        have = sorted(p.name for p in (path / "binned_outputs").glob("square_*")) if path.is_dir() else []
        raise FileNotFoundError(
            f"No bin folder {folder}. Available bin sizes: {have or 'none (is this a Visium HD outs folder?)'}; "
            "pass bin_size= one of those."
        )
    spatial = require_file(folder / "spatial", f"spatial/ folder of the {folder.name} bins")
    adata, counts_src = read_10x_counts(folder, counts)
    positions, positions_src = read_positions(spatial)
    sf_path = spatial / "scalefactors_json.json"
    sf = read_json(sf_path, "Visium HD scale factors")
    if mpp is None:
        if "microns_per_pixel" not in sf:
            raise KeyError(f"{sf_path} has no 'microns_per_pixel'; pass mpp= (microns per full-res pixel).")
        mpp = float(sf["microns_per_pixel"])
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}.")
    diameter = float(sf.get("bin_size_um", bin_size))
    if fullres_image is not None:
        arr, image_src, scalef = read_image(fullres_image, "full-resolution H&E"), Path(fullres_image), 1.0
        check_image(arr, image_src)
    else:
        arr, kind, image_src = choose_image(spatial, image)
        key = f"tissue_{kind}_scalef"
        if key not in sf:
            raise KeyError(f"{sf_path} has no {key!r} for the {kind} image.")
        scalef = positive_field(sf, key, sf_path)
    if path.name.startswith("square_"):
        default_id = path.parent.parent.parent.name if path.parent.name == "binned_outputs" else path.name
    else:
        default_id = path.resolve().parent.name if path.name == "outs" else path.resolve().name
    return spaceranger_library(
        adata,
        counts_src,
        positions,
        positions_src,
        arr,
        image_src,
        scalef,
        mpp,
        library=str(library_id or default_id),
        in_tissue_only=in_tissue_only,
        diameter_um=diameter,
        technology="visium_hd",
    )
