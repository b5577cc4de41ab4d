"""Record the physical scale of a section whose elements do not say it (custom pipelines, pixel coordinates)."""

from __future__ import annotations

from typing import Any

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import TABLE_KEY
from .._core.records import SCALE_SLOT, claim
from .._core.spatial import affine_matrix, resolve
from .._core.units import linear_scale


@inject_docs
def set_units(
    sdata: Any,
    *,
    microns_per_unit: float,
    library: str | list[str] | None = None,
    coordinate_system: str | None = None,
    table_key: str = TABLE_KEY,
    library_key: str | None = None,
    overwrite: bool = False,
) -> None:
    """Say how many microns one unit of a coordinate system is, where the object does not record it.

    nichekd reads the scale from the object (Space Ranger scale factors, Visium spot and Visium HD bin sizes,
    Xenium's convention) and refuses to guess otherwise. For anything else, e.g. shapes and images in pixels from
    a custom pipeline, call this once; the scale is written where Space Ranger and squidpy keep it,
    ``uns['spatial'][library]['scalefactors']['microns_per_pixel']`` (microns per unit of the annotated shapes,
    the units of ``obsm['spatial']``), so it travels with the table through zarr.

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` (or its table).
    microns_per_unit
        %(microns_per_unit)s
    library
        Libraries to set (default: all).
    coordinate_system
        %(coordinate_system)s
    table_key
        %(table_key)s
    library_key
        %(library_key)s
    overwrite
        Replace a different scale the object already records for a library (e.g. Space Ranger's
        ``microns_per_pixel``); without it such a library is refused and nothing is written. A scale set by
        ``set_units`` itself, or an equal one, is replaced without it.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.pp.set_units(sdata, microns_per_unit=0.2125, coordinate_system="global")  # 0.2125 um per pixel  # doctest: +SKIP
    """
    _val.check_positive("microns_per_unit", microns_per_unit)
    # resolving with the given scale validates the libraries and coordinate systems before anything is written
    ctx = resolve(
        sdata,
        table_key=table_key,
        library_key=library_key,
        coordinate_system=coordinate_system,
        microns_per_unit=float(microns_per_unit),
        images=False,
    )
    wanted = list(ctx.libraries) if library is None else [library] if isinstance(library, str) else library
    records = {}
    for name in wanted:
        lib = ctx.library(name)
        # microns per unit of the annotated shapes = microns per coordinate unit x coordinate units per shape unit
        scale = 1.0
        if lib.region is not None and not isinstance(sdata, type(ctx.table)) and lib.region in sdata.shapes:
            scale = linear_scale(affine_matrix(sdata.shapes[lib.region], lib.coordinate_system))
        records[name] = float(microns_per_unit) * scale
    spatial = dict(ctx.table.uns.get("spatial", {}) or {})
    old = {
        name: ((spatial.get(name) or {}).get("scalefactors") or {}).get("microns_per_pixel")
        for name in records
    }
    changed = [
        name
        for name, value in records.items()
        if old[name] is None or abs(float(old[name]) - value) > 1e-9 * value
    ]
    written = claim(
        ctx.table,
        [(SCALE_SLOT, name) for name in changed],
        writer="set_units",
        overwrite=overwrite,
        rename=None,
    )
    for name, value in records.items():
        entry = dict(spatial.get(name, {}) or {})
        entry["scalefactors"] = {**dict(entry.get("scalefactors", {}) or {}), "microns_per_pixel": value}
        spatial[name] = entry
    ctx.table.uns["spatial"] = spatial
    written.record(ctx.table)
