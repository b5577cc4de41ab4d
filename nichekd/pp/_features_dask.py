"""``histology_features`` on dask: spatial partitions of the cells, each encoded by a (possibly remote) worker."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._core import dask as _dask
from .._core import patches as _image
from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import INSTANCE_KEY, LIBRARY_KEY, REGION_KEY, SPATIAL_KEY, TABLE_KEY
from .._core.keys import features_key as default_features_key
from .._core.records import claim, store_params
from .._core.spatial import Library, microns_record, resolve
from .._core.table import get_table
from ..io._build import make_shapes
from ..models import encoders as _enc
from . import _grid
from ._features import (
    _standardize,
    check_feature_args,
    check_grid_extent,
    fit_rows,
    fitted_statistics,
    histology_features,
    partition_of_checked_section,
    statistics_from,
)


def _partition_table(
    table: ad.AnnData, rows: np.ndarray, lib: Library, xy_um: np.ndarray, library_key: str | None
) -> ad.AnnData:
    """A minimal table of ``rows``: library, coordinates (units of the library's coordinate system) and their
    scale; no counts are shipped."""
    part = ad.AnnData(obs=pd.DataFrame(index=table.obs_names[rows].astype(str)))
    part.obs[library_key or LIBRARY_KEY] = pd.Categorical([lib.name] * len(rows))
    part.obsm[SPATIAL_KEY] = xy_um[rows] / lib.microns_per_unit
    part.uns["spatial"] = microns_record([lib.name], lib.microns_per_unit)
    return part


def _image_tiles(pyramid: Any, centres_um: np.ndarray, patch_size_um: float, input_size: int) -> np.ndarray:
    """Integer ``(column, row)`` of the image tile that :func:`nichekd._core.patches.iter_patches` reads each cell from.

    Partitions made of whole tiles give every patch the same read region, hence the same pixels, as one
    process does (the anti-aliasing box filter's phase depends on the region's origin).
    """
    level = pyramid.level_for(patch_size_um / input_size)
    ty, tx = _image._tile_size(level)
    px = level.um_to_px(np.asarray(centres_um, dtype=float))
    h, w = level.shape_yx
    col = np.clip(np.floor(px[:, 0] / tx), -1, w // tx + 1)
    row = np.clip(np.floor(px[:, 1] / ty), -1, h // ty + 1)
    return np.c_[col, row].astype(np.int64)


def _encode_partition(image: Any, image_name: str, part: ad.AnnData, kwargs: dict[str, Any]) -> tuple:
    """Runs on a worker: features of one partition with the single-process function."""
    import dask
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    # the partition's cells as points in the image's coordinate system, annotated by the partition table
    lib = str(part.obs.iloc[0, 0])
    cs = kwargs.pop("coordinate_system")
    region = f"{lib}_partition"
    shapes = make_shapes(part.obsm[SPATIAL_KEY], 1.0, cs, index=np.arange(part.n_obs))
    part.obs[REGION_KEY] = pd.Categorical([region] * part.n_obs)
    part.obs[INSTANCE_KEY] = np.arange(part.n_obs)
    part = TableModel.parse(part, region=region, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    if not hasattr(image, "children") and not hasattr(image.data, "dask"):  # held in memory, not in a store
        import dask.array as da

        # SpatialData takes dask-backed images only; tiles of MAX_TILE_PX read the same regions as one process
        image = image.copy(
            data=da.from_array(image.data, chunks=(-1, _image.MAX_TILE_PX, _image.MAX_TILE_PX))
        )
    work = SpatialData(images={image_name: image}, shapes={region: shapes}, tables={TABLE_KEY: part})
    # image chunks are read here, in the worker: a nested compute on the cluster would wait for a free
    # worker thread while holding this one (a deadlock with one thread per worker)
    with dask.config.set(scheduler="sync"), partition_of_checked_section():
        out = histology_features(work, table_key=TABLE_KEY, copy=True, **kwargs)
    key = kwargs["key_added"]
    return np.asarray(out.obsm[key], dtype=np.float32), dict(out.uns[key]["params"])


@inject_docs
def histology_features_dask(
    sdata: Any,
    *,
    partition_size: int = _dask.DEFAULT_PARTITION_SIZE,
    image_key: str | None = None,
    table_key: str = TABLE_KEY,
    library_key: str = LIBRARY_KEY,
    key_added: str | None = None,
    standardize: str | None = None,
    progress: bool = True,
    copy: bool = False,
    overwrite: bool = False,
    **kwargs: Any,
) -> ad.AnnData | None:
    """:func:`nichekd.pp.histology_features` in spatial partitions scheduled by dask.

    The cells of each library are cut into compact spatial blocks of about ``partition_size`` cells; each block
    is encoded by :func:`~nichekd.pp.histology_features` in its own task, which reads only the image chunks
    under its cells (lazily, from the image's dask array: a slide in a zarr store is never loaded whole). With
    an active :class:`distributed.Client` the tasks run on its workers, so a cohort of slides spreads over a
    cluster; without one they run here one after the other. Features equal the single-process ones.

    Parameters
    ----------
    sdata
        SpatialData in the nichekd layout, with the H&E image(s).
    partition_size
        Cells per task (about).
    image_key
        Image element (one library only); default the layout's record.
    table_key, library_key
        Table and its ``obs`` column of libraries.
    key_added
        ``obsm``/``uns`` key; default ``f"X_{backbone}"`` as in ``histology_features``.
    standardize
        ``"library"``: z-score each feature within each library, over all partitions together.
    progress
        %(progress)s
    copy
        %(copy)s
    overwrite
        %(overwrite)s
        Features are always recomputed (no reuse of features with the same settings).
    **kwargs
        Passed to :func:`~nichekd.pp.histology_features` (``backbone``, ``patch_size_um``, ``batch_size``,
        ``device``, ``stain_normalization`` with a ``stain_reference`` dict, ...).

    Returns
    -------
    ``None``, or the table copy if ``copy=True``. Writes ``obsm[key_added]`` and ``uns[key_added]['params']``
    (the ``histology_features`` parameters plus ``partitions`` and ``scheduler``).

    Examples
    --------
    >>> import nichekd as nk
    >>> from distributed import Client, LocalCluster
    >>> sdata = nk.datasets.synthetic_tissue(20_000, random_state=0)  # doctest: +SKIP
    >>> with Client(LocalCluster(n_workers=2, threads_per_worker=1)):  # doctest: +SKIP
    ...     nk.pp.histology_features_dask(sdata, backbone="stain", partition_size=5000)
    """
    import inspect

    import dask

    known = set(inspect.signature(histology_features).parameters) - {"sdata", "provenance"}
    unknown = set(kwargs) - known
    if unknown:  # checked here, not in a worker after the cluster has started
        raise TypeError(f"histology_features_dask() got unexpected keyword arguments {sorted(unknown)}.")
    for bad in ("shapes_key", "table"):
        if bad in kwargs:
            raise TypeError(
                f"histology_features_dask does not take {bad}=; put the centres in obsm['spatial'] "
                "(or use nk.pp.histology_features)."
            )
    if kwargs.get("stain_normalization") and not isinstance(kwargs.get("stain_reference"), dict):
        raise ValueError(
            "With stain_normalization, pass stain_reference= as a dict (e.g. uns[key]['params']"
            "['stain_reference'] of an earlier run): a reference computed per partition would differ."
        )
    _val.check_int("partition_size", partition_size)
    check_feature_args(standardize=standardize, **kwargs)  # every option, before any task starts
    table = get_table(sdata, table_key)
    if table.n_obs == 0:
        raise ValueError("The table has no observations.")
    # every library must have its image before any task starts
    ctx = resolve(sdata, table_key=table_key, library_key=library_key, image_key=image_key, need_image=True)
    xy, labels = ctx.xy_um, ctx.labels
    if image_key is not None and len(set(labels)) > 1:
        raise ValueError("image_key= names one image but the table has several libraries.")
    backbone = kwargs.get("backbone", "efficientnet_lite0")
    spec = _enc.resolve_spec(
        backbone, input_size=kwargs.get("input_size"), mpp=kwargs.get("mpp"), mean=kwargs.get("mean"),
        std=kwargs.get("std"), checkpoint_path=kwargs.get("checkpoint_path"),
    )  # fmt: skip
    if key_added is None:
        key_added = default_features_key(
            spec.name
        )  # the rule of histology_features, from the registered name
    # the twin of histology_features: it may replace that function's features, nothing else without overwrite
    written = claim(
        table, [("obsm", key_added), ("uns", key_added)], writer="histology_features", overwrite=overwrite
    )
    kwargs = {**kwargs, "key_added": key_added, "library_key": library_key}
    if image_key is not None:
        kwargs["image_key"] = image_key

    if spec.name == "precomputed":
        raise ValueError("backbone='precomputed' reads no image: use nk.pp.histology_features.")
    patch_size_um = kwargs.get("patch_size_um") or spec.input_size * spec.mpp
    # "auto" is decided once over each whole section: partitions must share one grid
    sections = {lib: xy[labels == lib] for lib in dict.fromkeys(labels)}
    kwargs["grid_um"], grid_choice = _grid.resolve_grid_um(
        kwargs.get("grid_um", "auto"), sections, patch_size_um
    )
    if kwargs["grid_um"] is not None:
        check_grid_extent(kwargs["grid_um"], sections)  # here, per section: a partition may be smaller
    parts, part_lib = [], []
    for lib in dict.fromkeys(labels):
        rows = np.flatnonzero(labels == lib)
        tiles = _image_tiles(ctx.pyramid(lib), xy[rows], patch_size_um, spec.input_size)
        parts += [rows[g] for g in _dask.tile_partitions(tiles, partition_size)]
        part_lib += [lib] * (len(parts) - len(part_lib))
    images = {}
    tasks = []
    for rows, lib in zip(parts, part_lib, strict=True):
        name = ctx.library(lib).image
        if name not in images:  # one graph key per image: shipped once to each worker that needs it
            images[name] = dask.delayed(sdata.images[name], pure=True, traverse=False)
        part = _partition_table(table, rows, ctx.library(lib), xy, ctx.library_key)
        task_kwargs = {**kwargs, "image_key": name, "library_key": ctx.library_key or LIBRARY_KEY,
                       "coordinate_system": ctx.library(lib).coordinate_system}  # fmt: skip
        tasks.append(dask.delayed(_encode_partition, pure=True)(images[name], name, part, task_kwargs))
    results = _dask.compute(tasks, progress=progress, desc="histology feature partitions")

    feats = np.empty((table.n_obs, results[0][0].shape[1]), dtype=np.float32)
    for rows, (f, _) in zip(parts, results, strict=True):
        feats[rows] = f
    fit = fit_rows(table)
    if standardize == "library":
        feats = _standardize(feats, labels, fit)
    params = results[0][1]
    for field in ("mpp_used", "pyramid_level"):  # per library: merge the partitions' records
        params[field] = {k: v for _, p in results for k, v in p.get(field, {}).items()}
    # a stain reference is passed to every partition as a dict: only the library z-score is fitted here
    fitted = fitted_statistics(standardize, params.get("stain_normalization"), params.get("stain_reference"))
    params.update(
        image_key=image_key,
        library_key=library_key,
        standardize=standardize,
        fitted_statistics=fitted,
        statistics_from=statistics_from(fitted, fit),
        table_key=table_key,
        partitions=len(parts),
        partition_size=int(partition_size),
        scheduler=_dask.scheduler_name(),
        grid_choice=grid_choice,
    )
    for drop in ("versions", "date"):
        params.pop(drop, None)
    target = table.copy() if copy else table
    target.obsm[key_added] = feats
    store_params(target, key_added, params, claim=written)
    return target if copy else None
