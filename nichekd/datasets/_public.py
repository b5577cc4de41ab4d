"""Loaders of the small public samples in the shared data folder (``NICHEKD_DATA_DIR``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .._core.table import get_table

_ENV = "NICHEKD_DATA_DIR"
_CACHE_ENV = "NICHEKD_CACHE_DIR"
_REPO = Path(__file__).resolve().parents[2]

# Where each public sample comes from, for the message when it is not found (no download at run time).
SOURCES = {
    "st_mob": "STUtility's example counts (github.com/jbergenstrahle/STUtility, inst/extdata/counts, MIT)",
    "visium_hd_kidney_crop": "10x Genomics' public Visium_HD_Human_Kidney_FFPE dataset (a 1 mm crop of it)",
    "dlpfc_donor1": "LieberInstitute/HumanPilot (github.com/LieberInstitute/HumanPilot), sections 151507-151510",
    "visium_mouse_brain": "10x Genomics' public V1_Adult_Mouse_Brain dataset",
    "visium_tiny": "scanpy's test data (scanpy/tests/_data/visium_data)",
    "xenium_hest_tiny": "HEST-1k sample NCBI858 (huggingface.co/datasets/MahmoodLab/hest)",
}


def cache_dir() -> Path:
    """nichekd's cache folder: ``$NICHEKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/nichekd``, else
    ``~/.cache/nichekd``. Dataset folders placed in its ``data/`` subfolder are found by the loaders.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.datasets.cache_dir()  # doctest: +SKIP
    PosixPath('/home/me/.cache/nichekd')
    """
    if os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nichekd"


def resolve_data_dir(data_dir: str | Path | None = None, dataset: str | None = None) -> Path:
    """The data folder: the argument, else ``$NICHEKD_DATA_DIR``, else the cache's ``data/`` folder (see
    :func:`cache_dir`), else ``../shared/data`` from the current directory or a source checkout; with
    ``dataset``, that subfolder.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.datasets.resolve_data_dir(dataset="st_mob")  # doctest: +SKIP
    PosixPath('../shared/data/st_mob')
    """
    if data_dir is not None:
        candidates = [Path(data_dir).expanduser()]
    elif os.environ.get(_ENV):
        candidates = [Path(os.environ[_ENV]).expanduser()]
    else:
        candidates = [
            cache_dir() / "data",
            Path.cwd().parent / "shared" / "data",
            _REPO.parent / "shared" / "data",
        ]
    for root in candidates:
        path = root / dataset if dataset else root
        if path.is_dir():
            return path
    looked = [str(c / dataset) if dataset else str(c) for c in candidates]
    origin = f" It comes from {SOURCES[dataset]}." if dataset in SOURCES else ""
    raise FileNotFoundError(
        f"Dataset folder {dataset or ''} not found (looked in {looked}).{origin} nichekd downloads nothing: put "
        f"the folder under {cache_dir() / 'data'}, set {_ENV} to the folder holding it, or pass data_dir=."
    )


def st_mob(data_dir: str | Path | None = None, sections: Sequence[str] = ("MOB1", "MOB2", "MOB3", "MOB4")):
    """Mouse olfactory bulb, legacy Spatial Transcriptomics (STUtility example data), sections concatenated.

    Parameters
    ----------
    data_dir
        Folder holding ``st_mob/``; defaults to ``$NICHEKD_DATA_DIR`` or ``../shared/data``.
    sections
        Which of ``MOB1``..``MOB4`` to load (one library each).

    Returns
    -------
    SpatialData in the standard layout; ``obs['animal']`` (categorical) from ``metaData.csv``.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.st_mob(sections=("MOB1", "MOB3"))  # doctest: +SKIP
    >>> sdata.tables["table"].obs["animal"].cat.categories.tolist()  # doctest: +SKIP
    ['1', '2']
    """
    import spatialdata

    from ..io._st import read_st

    root = resolve_data_dir(data_dir, "st_mob")
    if isinstance(sections, str) or not len(sections):
        raise ValueError(f"sections must be a non-empty list such as ('MOB1', 'MOB2'), got {sections!r}.")
    meta = pd.read_csv(root / "metaData.csv", sep=";")
    animal = {
        Path(s).name.split(".")[0]: str(i) for s, i in zip(meta["samples"], meta["individual"], strict=True)
    }
    unknown = [s for s in sections if s not in animal]
    if unknown:
        raise ValueError(f"Unknown sections {unknown}; st_mob has {sorted(animal)}.")
    parts = [
        read_st(root / f"{s}.tsv.gz", root / f"alignment_table_{s}.tsv", root / f"{s}.jpg", library_id=s)
        for s in sections
    ]
    for s, part in zip(sections, parts, strict=True):
        # spot names ("<x>x<y>", array coordinates) repeat across sections: make them unique before joining
        part.tables["table"].obs_names = [f"{n}-{s}" for n in part.tables["table"].obs_names]
    # uns_merge keeps each section's uns['spatial'] record (its units)
    sdata = (
        spatialdata.concatenate(parts, concatenate_tables=True, uns_merge="unique")
        if len(parts) > 1
        else parts[0]
    )
    table = get_table(sdata)
    table.obs["animal"] = pd.Categorical(table.obs["library"].astype(str).map(animal))
    return sdata


def visium_hd_kidney_crop(data_dir: str | Path | None = None, *, library_id: str = "kidney"):
    """Human kidney cortex, Visium HD 8 um bins on a 1 mm x 1 mm H&E crop (2 um/px).

    Parameters
    ----------
    data_dir
        Folder holding ``visium_hd_kidney_crop/``; defaults to ``$NICHEKD_DATA_DIR`` or ``../shared/data``.
    library_id
        Section id.

    Returns
    -------
    SpatialData in the standard layout; ``obs['he_tissue']`` marks bins on stained tissue.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.visium_hd_kidney_crop()  # doctest: +SKIP
    """
    import anndata as ad

    from ..io._hest import read_anndata_image

    root = resolve_data_dir(data_dir, "visium_hd_kidney_crop")
    adata = ad.read_h5ad(root / "bins_8um_crop.h5ad")
    return read_anndata_image(
        adata,
        root / "he_crop.png",
        mpp=float(adata.uns["um_per_hires_px"]),
        spatial_key="spatial",
        xy_order="xy",
        diameter_um=float(adata.uns.get("bin_size_um", 8.0)),
        kind="spot",
        technology="visium_hd",
        library_id=library_id,
    )
