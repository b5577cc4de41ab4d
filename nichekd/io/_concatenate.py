"""Merge several sections (libraries) in the standard layout into one SpatialData object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import pandas as pd

from .._layout import INSTANCE_KEY, LIBRARY_KEY, REGION_KEY, TABLE_KEY, UNS_KEY, get_table, library_infos


def concatenate(
    sdatas: Sequence | Mapping,
    *,
    library_key: str = LIBRARY_KEY,
    join: Literal["inner", "outer"] = "inner",
    table_key: str = TABLE_KEY,
):
    """Put several sections in one object: elements kept per section, tables stacked.

    Parameters
    ----------
    sdatas
        SpatialData objects in the standard layout (a list, or a mapping whose values are used), each with
        distinct library ids and element names.
    library_key
        ``obs`` column holding the library of each observation (categorical in the result).
    join
        Genes kept: ``"inner"`` (shared by all sections) or ``"outer"`` (union, missing counts are 0).
    table_key
        Name of the table in every input and in the result.

    Returns
    -------
    One SpatialData object; ``uns['nichekd']['libraries']`` lists every section and the table annotates every
    shapes element. The inputs are not modified.

    Examples
    --------
    >>> import nichekd as nk
    >>> both = nk.io.concatenate([nk.io.read_visium("a/"), nk.io.read_visium("b/")])  # doctest: +SKIP
    """
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    objs = list(sdatas.values()) if isinstance(sdatas, Mapping) else list(sdatas)
    if not objs:
        raise ValueError("concatenate needs at least one SpatialData object.")
    if join not in ("inner", "outer"):
        raise ValueError(f"join must be 'inner' or 'outer', got {join!r}.")
    tables = [get_table(s, table_key) for s in objs]
    libraries: dict[str, dict] = {}
    for i, t in enumerate(tables):
        for lib in library_infos(t):
            if lib in libraries:
                raise ValueError(
                    f"Library id {lib!r} appears in more than one input (input {i}); read the sections with "
                    "distinct library_id= values."
                )
            libraries[lib] = dict(t.uns[UNS_KEY]["libraries"][lib])
    elements: dict[str, dict] = {"images": {}, "labels": {}, "points": {}, "shapes": {}}
    for i, s in enumerate(objs):
        for kind, store in elements.items():
            for name, el in getattr(s, kind).items():
                if name in store or any(name in other for other in elements.values()):
                    raise ValueError(f"Element name {name!r} appears in more than one input (input {i}).")
                store[name] = el
    if join == "inner":
        genes = set.intersection(*(set(t.var_names) for t in tables))
        if not genes:
            raise ValueError("The sections share no gene; use join='outer' or check the gene identifiers.")
    for t in tables:
        if library_key not in t.obs:
            raise KeyError(f"A table lacks obs[{library_key!r}]; pass the library_key= its readers used.")
    names = pd.Index([n for t in tables for n in t.obs_names])
    merged = ad.concat(
        tables,
        join=join,
        merge="same",
        uns_merge="same",
        fill_value=0,
        # barcodes repeat across Visium sections: suffix them with the library only when they clash
        index_unique=None if names.is_unique else "-",
        keys=None if names.is_unique else [",".join(map(str, library_infos(t))) for t in tables],
    )
    merged.obs[library_key] = pd.Categorical(merged.obs[library_key].astype(str))
    merged.obs[REGION_KEY] = pd.Categorical(merged.obs[REGION_KEY].astype(str))
    merged.uns[UNS_KEY] = {"libraries": libraries}
    merged.uns.pop("spatialdata_attrs", None)
    regions = sorted(elements["shapes"])
    merged = TableModel.parse(merged, region=regions, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return SpatialData(**elements, tables={table_key: merged})
