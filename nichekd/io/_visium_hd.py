"""10x Visium HD (Space Ranger 3+ ``outs`` folders): a thin adapter over :func:`spatialdata_io.visium_hd`.

The adapter reads one bin size (8 um by default, the usual analysis resolution), fails with clear errors on
missing files or unknown bin sizes (spatialdata-io would fall back to every bin size, or stop on an assertion),
and adds the ``in_tissue`` filter of the raw matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ._checks import check_barcodes, find_first, require_file
from ._visium import counts_barcodes, counts_file, finish_spaceranger, positions_barcodes, read_scalefactors

# spatialdata_io.visium_hd checks bin_size_um / spot_diameter_fullres == microns_per_pixel
_HD_SCALEFACTORS = (
    "spot_diameter_fullres",
    "bin_size_um",
    "microns_per_pixel",
    "tissue_hires_scalef",
    "tissue_lowres_scalef",
)


def bin_folder(outs: Path, bin_size: int) -> Path:
    """``outs/binned_outputs/square_{bin_size:03d}um``, or an error listing the bin sizes present."""
    folder = outs / "binned_outputs" / f"square_{int(bin_size):03d}um"
    if not folder.is_dir():
        have = sorted(p.name for p in (outs / "binned_outputs").glob("square_*"))
        raise FileNotFoundError(
            f"No bin folder {folder}. Bin folders present: {have or 'none (is this a Visium HD outs folder?)'}; "
            "pass bin_size= one of those sizes in microns."
        )
    return folder


def read_visium_hd(
    path: str | Path,
    *,
    bin_size: int = 8,
    library_id: str | None = None,
    counts: Literal["filtered", "raw"] = "filtered",
    fullres_image: str | Path | None = None,
    in_tissue_only: bool = True,
    reader_kwargs: Mapping[str, Any] | None = None,
):
    """Read one bin size of a 10x Visium HD Space Ranger output with :func:`spatialdata_io.visium_hd`.

    The result is spatialdata-io's object: bins as squares ``{library}_square_{bin:03d}um`` in full-resolution
    pixels, the images ``{library}_hires_image`` / ``_lowres_image`` (``_full_image`` when given), and the table
    **named after the bin folder** (``"square_008um"``: pass ``table_key="square_008um"`` to nichekd
    functions). Microns come from the bin size in the element name.

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder (``feature_slice.h5``, ``spatial/``, ``binned_outputs/``).
    bin_size
        Bin side in microns (2, 8 or 16); selects ``binned_outputs/square_{bin_size:03d}um``.
    library_id
        Section id naming the elements; defaults to the prefix of ``*_feature_slice.h5``, else the run name
        (the folder holding ``outs``).
    counts
        ``"filtered"`` or ``"raw"`` matrix (``.h5``).
    fullres_image
        The full-resolution H&E given to Space Ranger (by default spatialdata-io looks in
        ``outs/microscope_image/``).
    in_tissue_only
        Keep only bins flagged ``in_tissue``.
    reader_kwargs
        Further keyword arguments of :func:`spatialdata_io.visium_hd` (e.g. ``bins_as_squares=False``,
        ``load_all_images=True``).

    Returns
    -------
    SpatialData as written by spatialdata-io.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.io.read_visium_hd("run1/outs", bin_size=8)  # doctest: +SKIP
    >>> nk.tl.teacher_niches(sdata, n_niches=5, table_key="square_008um")  # doctest: +SKIP
    """
    import spatialdata_io

    path = require_file(path, "Visium HD Space Ranger outs folder")
    folder = bin_folder(path, bin_size)
    feature_slice = find_first(
        path,
        ["feature_slice.h5", "*_feature_slice.h5"],
        "feature slice file",
        "Space Ranger 3+ writes it to outs/; spatialdata-io reads the layout version from it.",
    )
    counts_src = counts_file(folder, counts, allow_mtx=False)
    positions_src = require_file(
        folder / "spatial" / "tissue_positions.parquet",
        f"bin positions of {folder.name}",
        "Space Ranger 3+ writes it.",
    )
    check_barcodes(counts_barcodes(counts_src), positions_barcodes(positions_src), counts_src, positions_src)
    sf = read_scalefactors(
        folder / "spatial" / "scalefactors_json.json", _HD_SCALEFACTORS, "Visium HD scale factors"
    )
    if fullres_image is not None:
        fullres_image = require_file(fullres_image, "full-resolution H&E image")
    prefixed = feature_slice.name != "feature_slice.h5"
    run_name = path.resolve().parent.name if path.name == "outs" else path.resolve().name
    dataset_id = library_id or (None if prefixed else run_name)
    options = {
        "dataset_id": dataset_id,
        "filtered_counts_file": counts == "filtered",
        "load_segmentations_only": False,
        "bin_size": int(bin_size),
        "fullres_image_file": fullres_image,
        **dict(reader_kwargs or {}),
    }
    sdata = spatialdata_io.visium_hd(path, **options)
    return finish_spaceranger(
        sdata,
        folder.name,
        counts_src,
        path,
        technology="visium_hd",
        in_tissue_only=in_tissue_only,
        scalefactors=sf,
    )
