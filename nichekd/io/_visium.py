"""10x Visium (Space Ranger output folders): a thin adapter over :func:`spatialdata_io.visium`.

spatialdata-io does the reading; the adapter adds what it lacks for nichekd: clear errors for missing or
mismatched files before anything is read, the ``counts=`` switch (``.h5`` or Space Ranger 1's mtx folder),
``in_tissue`` filtering, an ``mpp=`` override, and a check that the spots lie on a usable H&E image. The
Space Ranger helpers here are shared with :mod:`nichekd.io._visium_hd`.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._checks import (
    check_barcodes,
    check_counts,
    check_image_holds_observations,
    check_min_obs,
    check_unique_ids,
    find_first,
    parsing,
    positive_field,
    read_json,
    require_file,
)

_COUNTS = ("filtered", "raw")
# spatialdata_io.visium reads these keys whether or not the matching image exists
_VISIUM_SCALEFACTORS = ("spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef")


def counts_file(folder: Path, counts: str, *, allow_mtx: bool = True) -> Path:
    """The Space Ranger ``{counts}_feature_bc_matrix`` in ``folder``: ``.h5`` (optionally prefixed) or mtx.

    An mtx folder is returned as its ``matrix.mtx.gz`` (the file spatialdata-io's reader takes).
    """
    if counts not in _COUNTS:
        raise ValueError(f"counts must be 'filtered' or 'raw', got {counts!r}.")
    names = [f"{counts}_feature_bc_matrix.h5", f"*_{counts}_feature_bc_matrix.h5"]
    if allow_mtx:
        names.append(f"{counts}_feature_bc_matrix/matrix.mtx.gz")
    try:
        return find_first(folder, names, f"{counts} count matrix")
    except FileNotFoundError as err:
        other = _COUNTS[1 - _COUNTS.index(counts)]
        has_other = list(folder.glob(f"*{other}_feature_bc_matrix*"))
        hint = f" This folder has a {other} matrix: pass counts={other!r}." if has_other else ""
        raise FileNotFoundError(f"{err}{hint}") from None


def counts_barcodes(src: Path) -> pd.Index:
    """Barcodes of a 10x count matrix (``.h5`` or an mtx folder's ``matrix.mtx.gz``), without reading counts."""
    if src.suffix == ".h5":
        import h5py

        with parsing(src, "a 10x feature-barcode matrix (HDF5 .h5)"), h5py.File(src, "r") as f:
            if "matrix/barcodes" not in f:
                raise ValueError(f"{src} is not a 10x feature-barcode matrix (no matrix/barcodes dataset).")
            raw = f["matrix/barcodes"][:]
        return pd.Index([b.decode() if isinstance(b, bytes) else str(b) for b in raw])
    barcodes = require_file(src.parent / "barcodes.tsv.gz", "barcodes of the mtx count matrix")
    with parsing(barcodes, "gzipped barcodes of a Space Ranger mtx folder"), gzip.open(barcodes, "rt") as fh:
        return pd.Index([line.split("\t")[0].strip() for line in fh if line.strip()])


def positions_barcodes(src: Path) -> pd.Index:
    """Barcodes of a Space Ranger positions file (parquet, or CSV with or without a header)."""
    with parsing(src, "a Space Ranger spot positions table (parquet or CSV)"):
        if src.suffix == ".parquet":
            ids = pd.Index(pd.read_parquet(src, columns=["barcode"])["barcode"].astype(str))
        else:
            first = pd.read_csv(src, header=None, usecols=[0], dtype=str)[0]
            ids = pd.Index(first[first != "barcode"])
    check_unique_ids(ids, src)  # one barcode twice cannot be matched to the counts
    return ids


def read_scalefactors(src: Path, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    """``scalefactors_json.json`` as a dict, with the keys the reader needs present."""
    sf = read_json(src, what)
    missing = [k for k in keys if k not in sf]
    if missing:
        raise KeyError(f"{src} lacks {missing}; Space Ranger writes them (the reader needs {list(keys)}).")
    for key in keys:  # e.g. spot_diameter_fullres = 0 would divide by zero downstream
        sf[key] = positive_field(sf, key, src)
    return sf


def check_mpp(mpp: float | None) -> None:
    """Raise unless ``mpp`` is ``None`` or a positive number."""
    if mpp is not None and (not np.isfinite(mpp) or mpp <= 0):
        raise ValueError(f"mpp must be a positive number of microns per full-resolution pixel, got {mpp!r}.")


def keep_in_tissue(sdata: Any, table_key: str) -> None:
    """Drop the observations with ``obs['in_tissue'] == 0`` from the table and its annotated shapes, in place."""
    table = sdata.tables[table_key]
    keep = table.obs["in_tissue"].to_numpy() == 1
    if keep.all():
        return
    attrs = table.uns["spatialdata_attrs"]
    kept = table[keep].copy()
    for region in pd.unique(kept.obs[attrs["region_key"]].astype(str)):
        ids = kept.obs.loc[kept.obs[attrs["region_key"]].astype(str) == region, attrs["instance_key"]]
        sdata.shapes[region] = sdata.shapes[region].loc[ids.to_numpy()]
    sdata.tables[table_key] = kept


def finish_spaceranger(
    sdata: Any,
    table_key: str,
    counts_src: Path,
    source: Path,
    *,
    technology: str,
    in_tissue_only: bool,
    scalefactors: dict[str, Any],
    mpp: float | None = None,
) -> Any:
    """Shared tail of the Visium readers: raw counts, ``in_tissue``, units recorded, spots on the image."""
    table = sdata.tables[table_key]
    check_counts(table.X, counts_src)
    if in_tissue_only:
        keep_in_tissue(sdata, table_key)
        table = sdata.tables[table_key]
    check_min_obs(table.n_obs, f"{counts_src} (in_tissue_only={in_tissue_only})")
    # scanpy/squidpy read the scale factors here, keyed by the section (the annotated element); mpp= overrides
    # Space Ranger's microns per full-resolution pixel (the unit of the spots). The technology is recorded with
    # them because sdata.attrs (spatialdata-io's reader name) does not survive spatialdata.concatenate.
    sf = dict(scalefactors)
    if mpp is not None:
        sf["microns_per_pixel"] = float(mpp)
    region = table.uns["spatialdata_attrs"]["region"]
    entry = table.uns.setdefault("spatial", {}).setdefault(
        region if isinstance(region, str) else region[0], {}
    )
    entry["scalefactors"] = sf
    entry.setdefault("metadata", {})["technology"] = technology
    check_image_holds_observations(sdata, table_key, source)
    return sdata


def read_visium(
    path: str | Path,
    *,
    library_id: str | None = None,
    counts: Literal["filtered", "raw"] = "filtered",
    fullres_image: str | Path | None = None,
    in_tissue_only: bool = True,
    mpp: float | None = None,
    reader_kwargs: Mapping[str, Any] | None = None,
):
    """Read a 10x Visium Space Ranger output folder with :func:`spatialdata_io.visium`.

    The result is spatialdata-io's object (elements ``{library}`` (spots in full-resolution pixels),
    ``{library}_hires_image``, ``{library}_lowres_image``, table ``"table"``); nichekd functions find the
    microns (from the spot array: spots are 100 um apart) and the best image themselves, skipping a blank placeholder image with a warning.

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder (the count matrix beside a ``spatial/`` folder). Space Ranger 1.x folders
        with only ``tissue_positions_list.csv`` and an mtx matrix folder are read too.
    library_id
        Section id naming the elements; defaults to the prefix of the count file, else the folder name.
    counts
        ``"filtered"`` (spots under tissue) or ``"raw"`` (all barcodes) matrix, as ``.h5`` or mtx folder.
    fullres_image
        The full-resolution H&E given to Space Ranger (finer than hires; nichekd then uses it).
    in_tissue_only
        Keep only spots flagged ``in_tissue`` (``obs['in_tissue']`` is kept either way).
    mpp
        Microns per **full-resolution** pixel, recorded as ``uns['spatial'][library]['scalefactors']
        ['microns_per_pixel']``; by default nichekd derives it from the spot array (100 um pitch).
    reader_kwargs
        Further keyword arguments of :func:`spatialdata_io.visium` (e.g. ``imread_kwargs``).

    Returns
    -------
    SpatialData as written by spatialdata-io; ``uns['spatial'][library]['scalefactors']`` holds the scale factors.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_visium("outs/", library_id="A1")  # doctest: +SKIP
    >>> sdata.tables["table"].obs["in_tissue"].all()  # doctest: +SKIP
    True
    """
    import spatialdata_io

    check_mpp(mpp)
    path = require_file(path, "Space Ranger output folder")
    spatial = require_file(path / "spatial", "spatial/ folder of the Space Ranger output")
    counts_src = counts_file(path, counts)
    positions_src = find_first(
        spatial,
        ["tissue_positions_list.csv", "tissue_positions.csv"],  # spatialdata-io's order
        "spot positions file",
        "Space Ranger writes it to spatial/.",
    )
    check_barcodes(counts_barcodes(counts_src), positions_barcodes(positions_src), counts_src, positions_src)
    sf = read_scalefactors(spatial / "scalefactors_json.json", _VISIUM_SCALEFACTORS, "Visium scale factors")
    if fullres_image is not None:
        fullres_image = require_file(fullres_image, "full-resolution H&E image").resolve()
    else:
        find_first(
            spatial,
            ["tissue_hires_image.png", "tissue_lowres_image.png"],
            "H&E image",
            "Pass fullres_image= if the folder has no hires/lowres image.",
        )
    # a prefixed "<id>_filtered_feature_bc_matrix.h5" names the library, as in spatialdata-io
    prefix = (
        counts_src.name.removesuffix(f"{counts}_feature_bc_matrix.h5").rstrip("_")
        if counts_src.suffix == ".h5"
        else ""
    )
    library = str(library_id or prefix or path.resolve().name)
    options = {"fullres_image_file": fullres_image, **dict(reader_kwargs or {})}
    sdata = spatialdata_io.visium(
        path, dataset_id=library, counts_file=counts_src.relative_to(path).as_posix(), **options
    )
    return finish_spaceranger(
        sdata,
        "table",
        counts_src,
        path,
        technology="visium",
        in_tissue_only=in_tissue_only,
        scalefactors=sf,
        mpp=mpp,
    )
