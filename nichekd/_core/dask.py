"""Spatial partitions of a table and their scheduling on dask (``dask.distributed`` when a Client is active).

A partition is a compact spatial block of one library's cells, so that the image chunks it reads are few and
a worker never loads a slide. Tasks are :func:`dask.delayed` calls: with an active
:class:`distributed.Client` (a ``LocalCluster`` or a real cluster) they run on its workers, otherwise in this
process, one after the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_PARTITION_SIZE = 50_000


def active_client() -> Any | None:
    """The current ``dask.distributed`` Client, or ``None`` (also when distributed is not installed)."""
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:  # no client
        return None


def spatial_partitions(xy: np.ndarray, libraries: np.ndarray, partition_size: int) -> list[np.ndarray]:
    """Row indices of compact spatial blocks, at most about ``partition_size`` rows each, never across libraries.

    Each library's bounding box is cut into a near-square grid with about ``n / partition_size`` cells; empty
    blocks are dropped. Every row is in exactly one partition.
    """
    if int(partition_size) < 1:
        raise ValueError(f"partition_size must be a positive number of cells, got {partition_size}.")
    xy = np.asarray(xy, dtype=float)
    libraries = np.asarray(libraries).astype(str)
    parts: list[np.ndarray] = []
    for lib in dict.fromkeys(libraries):  # first-seen order: deterministic
        rows = np.flatnonzero(libraries == lib)
        n_blocks = int(np.ceil(len(rows) / int(partition_size)))
        lo, hi = xy[rows].min(0), xy[rows].max(0)
        span = np.maximum(hi - lo, 1e-9)
        # grid with blocks about square in microns
        nx = max(1, int(round(np.sqrt(n_blocks * span[0] / span[1]))))
        ny = max(1, int(np.ceil(n_blocks / nx)))
        bx = np.minimum(((xy[rows, 0] - lo[0]) / span[0] * nx).astype(int), nx - 1)
        by = np.minimum(((xy[rows, 1] - lo[1]) / span[1] * ny).astype(int), ny - 1)
        block = by * nx + bx
        order = np.argsort(block, kind="stable")
        bounds = np.flatnonzero(np.diff(block[order])) + 1
        parts.extend(rows[g] for g in np.split(order, bounds) if len(g))
    return parts


def tile_partitions(tiles: np.ndarray, partition_size: int) -> list[np.ndarray]:
    """Positions (into ``tiles``) grouped into square blocks of whole image tiles, about ``partition_size`` each.

    ``tiles`` holds each cell's integer tile coordinates ``(column, row)``. A partition never splits a tile,
    so a patch reader that groups cells by tile sees the same groups as in one process.
    """
    if int(partition_size) < 1:
        raise ValueError(f"partition_size must be a positive number of cells, got {partition_size}.")
    tiles = np.asarray(tiles, dtype=np.int64)
    _, per_tile = np.unique(tiles, axis=0, return_counts=True)
    side = max(1, int(np.sqrt(int(partition_size) / per_tile.mean())))  # tiles per block side
    block = np.floor_divide(tiles, side)
    _, block_id = np.unique(block, axis=0, return_inverse=True)
    block_id = block_id.ravel()
    order = np.argsort(block_id, kind="stable")
    bounds = np.flatnonzero(np.diff(block_id[order])) + 1
    return [g for g in np.split(order, bounds) if len(g)]


def with_halo(xy: np.ndarray, libraries: np.ndarray, core: np.ndarray, radius: float) -> np.ndarray:
    """``core`` followed by the other rows of its library within ``radius`` of its bounding box.

    A neighbourhood of radius ``radius`` around any core row then lies entirely inside the returned rows.
    """
    xy = np.asarray(xy, dtype=float)
    libraries = np.asarray(libraries).astype(str)
    lib = libraries[core[0]]
    lo, hi = xy[core].min(0) - radius, xy[core].max(0) + radius
    near = np.flatnonzero((libraries == lib) & (xy >= lo).all(1) & (xy <= hi).all(1))
    return np.concatenate([core, np.setdiff1d(near, core, assume_unique=True)])


def compute(tasks: Sequence[Any], progress: bool = True, desc: str = "partitions") -> list[Any]:
    """Compute delayed ``tasks``: on the active distributed Client if any, else in this process (in order)."""

    client = active_client()
    if client is None:
        from tqdm.auto import tqdm

        # one at a time in this process: the same work as the single-process functions, with a progress bar
        return [t.compute(scheduler="sync") for t in tqdm(tasks, desc=desc, disable=not progress)]
    futures = client.compute(list(tasks))
    if progress:
        from distributed import progress as dprogress

        try:
            dprogress(futures, notebook=False)
        except Exception:  # progress display is optional (e.g. no terminal)
            pass
    return client.gather(futures)


def scheduler_name() -> str:
    """``"distributed (n workers)"`` or ``"sync"``: recorded in ``uns`` params."""
    client = active_client()
    if client is None:
        return "sync"
    return f"distributed ({len(client.scheduler_info().get('workers', {}))} workers)"
