"""``predict_niches`` on dask: features and student forward passes in spatial partitions with a halo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._core import dask as _dask
from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import LIBRARY_KEY, TABLE_KEY
from .._core.predictions import check_niche_write, prediction_targets, write_niche_predictions
from .._core.records import claim, store_run
from .._core.spatial import micron_coords
from .._core.table import get_table, library_labels
from ..models.student import NicheStudent
from ._predict import (
    _replay,
    check_encoder,
    check_prediction_args,
    encoder_settings,
    features_record,
    mean_neighbours,
    warn_sparse_neighbours,
)


def _predict_partition(model: NicheStudent, feats: np.ndarray, xy: np.ndarray, groups: np.ndarray,
                       n_core: int, batch_size: int, device: str) -> np.ndarray:  # fmt: skip
    """Runs on a worker: probabilities of the first ``n_core`` rows (the rest is their halo)."""
    proba = model.predict_proba(feats, xy, groups=groups, batch_size=batch_size, device=device)
    return proba[:n_core].astype(np.float32)


@inject_docs
def predict_niches_dask(
    sdata: Any,
    model: NicheStudent | str | Path,
    *,
    partition_size: int = _dask.DEFAULT_PARTITION_SIZE,
    table_key: str = TABLE_KEY,
    library_key: str = LIBRARY_KEY,
    key_added: str = "student_niche",
    batch_size: int = 2048,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    trust_features: bool = False,
) -> None:
    """:func:`nichekd.tl.predict_niches` for the cells of a table, in spatial partitions scheduled by dask.

    Missing features are computed with :func:`nichekd.pp.histology_features_dask` using the model's encoder
    settings. The student then runs per partition on the partition's cells plus a halo of the model's
    neighbourhood radius, so every cell sees exactly the neighbours it has in a single-process run and the
    result equals :func:`~nichekd.tl.predict_niches`. With an active :class:`distributed.Client` the tasks run
    on its workers. For H&E-only slides without cells, tile them first (``nk.pp.tissue_tiles``) or use
    :func:`~nichekd.tl.predict_niches`.

    Parameters
    ----------
    sdata
        SpatialData (or its table when the features are already in ``obsm``).
    model
        A fitted :class:`~nichekd.models.NicheStudent` or the folder it was saved to.
    partition_size
        Cells per task (about), halo excluded.
    table_key, library_key
        Table and its ``obs`` column of libraries (neighbourhoods never cross libraries).
    key_added
        Writes ``obs[key_added]``, ``obsm[f"{key_added}_proba"]``, ``obs[f"{key_added}_entropy"]`` and
        a run record in ``uns[key_added]['runs']``, as ``predict_niches`` does.
    batch_size
        Cells per forward pass.
    device
        %(device)s
    progress
        %(progress)s
    overwrite
        %(overwrite)s
        As in ``predict_niches`` (whose twin this is: each may replace the other's predictions).
    trust_features
        Accept ``obsm[features_key]`` without a ``histology_features`` record (you vouch for it), as in
        ``predict_niches``.

    Examples
    --------
    >>> import nichekd as nk
    >>> from distributed import Client, LocalCluster
    >>> with Client(LocalCluster(n_workers=2, threads_per_worker=1)):  # doctest: +SKIP
    ...     nk.tl.predict_niches_dask(sdata, "student_model/", partition_size=20_000)
    """
    import dask

    check_prediction_args(batch_size)
    _val.check_int("partition_size", partition_size)
    if not isinstance(model, NicheStudent):
        model = NicheStudent.load(model)
    if not model.is_fitted:
        raise ValueError("The model is not fitted; train it with nk.tl.distill or load a saved one.")
    adata = get_table(sdata, table_key)
    if adata.n_obs == 0:
        raise ValueError("The table has no observations.")
    features_key = model.features_key or "he_features"
    # every key written, checked before any work (the twin of predict_niches: the same writer)
    written = claim(adata, prediction_targets(key_added), writer="predict_niches", overwrite=overwrite)
    check_niche_write(adata, key_added, model.niche_names, overwrite=True)
    features_claim = None
    xy = micron_coords(sdata, table_key=table_key, library_key=library_key)
    libs = np.asarray(library_labels(adata, library_key)).astype(str)
    new_features = None
    if features_key in adata.obsm:
        check_encoder(
            model, features_record(adata, features_key), features_key, trust_features=trust_features
        )
        feats = np.asarray(adata.obsm[features_key], dtype=np.float32)
    else:
        if not encoder_settings(model.encoder):
            raise ValueError(
                f"No obsm[{features_key!r}] and the model records no encoder settings to recompute them."
            )
        from ..pp._features_dask import histology_features_dask

        new_keys = [("obsm", features_key), ("uns", features_key)]
        features_claim = claim(adata, new_keys, writer="histology_features", overwrite=overwrite)
        replay = _replay(model.encoder, features_key, table_key)
        replay.pop("table_key", None)
        new_features = histology_features_dask(
            sdata, partition_size=partition_size, table_key=table_key, library_key=library_key,
            progress=progress, copy=True, **replay, **({"overwrite": True} if overwrite else {}),
        )  # fmt: skip
        feats = np.asarray(new_features.obsm[features_key], dtype=np.float32)
    if feats.ndim != 2 or feats.shape != (adata.n_obs, model.n_features):
        raise ValueError(
            f"The model expects {model.n_features} features per cell, obsm[{features_key!r}] has shape "
            f"{feats.shape}; the encoder does not match the model."
        )
    if not np.isfinite(feats).all():
        raise ValueError(f"Some cells have NaN features in obsm[{features_key!r}] (e.g. off the image).")

    count = mean_neighbours(model, xy, libs)
    warn_sparse_neighbours(model, count, "predict_niches_dask")
    parts = _dask.spatial_partitions(xy, libs, partition_size)
    shared_model = dask.delayed(model, pure=True, traverse=False)
    tasks = []
    for core in parts:
        rows = _dask.with_halo(xy, libs, core, model.halo_um)  # neighbours and context windows
        task = dask.delayed(_predict_partition, pure=True)(
            shared_model, feats[rows], xy[rows], libs[rows], len(core), batch_size, device
        )
        tasks.append(task)
    results = _dask.compute(tasks, progress=progress, desc="prediction partitions")
    proba = np.empty((adata.n_obs, model.n_niches), dtype=np.float32)
    for core, p in zip(parts, results, strict=True):
        proba[core] = p

    # everything computed: write
    if new_features is not None:
        adata.obsm[features_key] = feats
        adata.uns[features_key] = new_features.uns[features_key]
        features_claim.record(adata)
    write_niche_predictions(adata, key_added, proba, model.niche_names, overwrite=True)
    store_run(
        adata,
        key_added,
        {
            "function": "predict_niches_dask",
            "mean_neighbours": count,
            "train_mean_neighbors": model.train_mean_neighbors,
            "overwrite": overwrite,
            "trust_features": trust_features,
            "model": repr(model),
            "niche_names": model.niche_names,
            "radius_um": model.radius_um,
            "features_key": features_key,
            "partitions": len(parts),
            "partition_size": int(partition_size),
            "scheduler": _dask.scheduler_name(),
        },
        claim=written,
    )
