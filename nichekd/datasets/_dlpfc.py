"""Human DLPFC (Maynard et al. 2021), donor 1: lowres H&E, spot positions and manual cortical layers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .._core.table import get_table
from .._core.units import VISIUM_FULLRES_DIAMETER_UM, visium_array_scale
from ..io._build import build_library
from ._public import resolve_data_dir

SECTIONS = ("151507", "151508", "151509", "151510")
LAYERS = ("L1", "L2", "L3", "L4", "L5", "L6", "WM")
SPOT_DIAMETER_UM = 55.0
_POSITIONS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _section(root: Path, sample: str, layers: pd.DataFrame, annotated_only: bool):
    from ..io._checks import check_image, check_on_image, read_image, read_json, require_file

    folder = root / sample
    scale = read_json(folder / "scalefactors_json.json", "scale factors")
    lowres_scalef = float(scale["tissue_lowres_scalef"])
    pos = pd.read_csv(require_file(folder / "tissue_positions_list.txt", "spot positions"), header=None)
    pos.columns = _POSITIONS
    pos = pos[pos["in_tissue"] == 1].set_index("barcode")
    lab = layers[layers["sample"].astype(str) == sample].set_index("barcode")["layer"]
    obs = pd.DataFrame(index=pos.index.astype(str))
    obs["layer"] = pd.Categorical(lab.reindex(obs.index).to_numpy(), categories=list(LAYERS))
    if annotated_only:
        keep = obs["layer"].notna().to_numpy()
        obs, pos = obs[keep], pos[keep]
    xy_fullres = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
    # the spot array (100 um pitch) gives the scale; spot_diameter_fullres spans 65 um (10x's definition)
    um_per_fullres = visium_array_scale(pos[["array_col", "array_row"]].to_numpy(float), xy_fullres) or (
        VISIUM_FULLRES_DIAMETER_UM / float(scale["spot_diameter_fullres"])
    )
    image = read_image(folder / "tissue_lowres_image.png", "lowres H&E")
    check_image(image, folder / "tissue_lowres_image.png")
    check_on_image(xy_fullres * lowres_scalef, image.shape, folder / "tissue_lowres_image.png")
    obs.index = [f"{sample}_{b}" for b in obs.index]
    # no counts in this release: an empty gene axis; the H&E and the layers are what it is for
    adata = ad.AnnData(X=np.zeros((len(obs), 0), dtype=np.float32), obs=obs)
    return build_library(
        adata,
        library=sample,
        xy_um=xy_fullres * um_per_fullres,
        diameter_um=SPOT_DIAMETER_UM,
        kind="spot",
        technology="visium",
        image=image,
        mpp=um_per_fullres / lowres_scalef,
    )


def dlpfc(
    data_dir: str | Path | None = None,
    *,
    sections: Sequence[str] = SECTIONS,
    annotated_only: bool = True,
):
    """Human dorsolateral prefrontal cortex, donor 1 (sections 151507-151510): H&E and manual layers.

    The shared copy holds each section's Space Ranger 1.0 positions, scale factors and lowres H&E (~12.7
    um/px) but no counts, with the manual cortical layer (``L1``-``L6``, ``WM``) of every annotated spot: an
    external truth for H&E-only niches (a ``labels`` teacher, :func:`nichekd.tl.annotation_probe`,
    leave-one-section-out). 151507/151508 and 151509/151510 are two pairs of adjacent sections, 300 um apart.
    Our own reader because spatialdata-io's ``visium`` needs a count matrix, which this release lacks.

    Parameters
    ----------
    data_dir
        Folder holding ``dlpfc_donor1/``; defaults to ``$NICHEKD_DATA_DIR`` or ``../shared/data``.
    sections
        Which sections to load (one library each).
    annotated_only
        Keep only spots with a layer label (spots in tissue without one get a missing ``layer`` otherwise).

    Returns
    -------
    SpatialData in the standard layout: 55 um spots in microns, the lowres H&E per section,
    ``obs['layer']`` (categorical, ordered L1..L6, WM) and an empty gene axis.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.dlpfc(sections=("151507", "151508"))  # doctest: +SKIP
    >>> sdata.tables["table"].obs["layer"].value_counts()  # doctest: +SKIP
    """
    import spatialdata

    from ..io._checks import require_file

    root = resolve_data_dir(data_dir, "dlpfc_donor1")
    if isinstance(sections, str) or not len(sections):
        raise ValueError(f"sections must be a non-empty list such as ('151507', '151508'), got {sections!r}.")
    unknown = [s for s in sections if str(s) not in SECTIONS]
    if unknown:
        raise ValueError(f"Unknown sections {unknown}; dlpfc_donor1 has {list(SECTIONS)}.")
    layers = pd.read_csv(require_file(root / "layers.tsv", "layer labels"), sep="\t")
    parts = [_section(root, str(s), layers, annotated_only) for s in sections]
    # "outer": the sections have no genes to intersect
    sdata = (
        spatialdata.concatenate(parts, concatenate_tables=True, join="outer", uns_merge="unique")
        if len(parts) > 1
        else parts[0]
    )
    table = get_table(sdata)
    table.obs["layer"] = pd.Categorical(table.obs["layer"], categories=list(LAYERS))
    return sdata
