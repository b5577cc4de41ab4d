"""Patch features on a square grid, read out per observation by bilinear interpolation.

Visium HD bins (8 um) are 14x smaller than a 112 um patch: neighbouring bins see almost the same pixels, so one
forward pass per bin repeats the same work. Encoding one patch per grid node (spacing ``grid_um``) and giving
every observation the bilinear interpolation of the 4 nodes around it cuts the encoder passes by about
``(grid_um / bin_um) ** 2`` (16x for 32 um over 8 um bins).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridReadout:
    """Where each observation reads its features: 4 node indices and their bilinear weights."""

    rows: np.ndarray  # (n,) table rows of the observations
    corners: np.ndarray  # (n, 4) node indices (global over all libraries)
    weights: np.ndarray  # (n, 4) float32, rows sum to 1


def grid_nodes(centres_um: np.ndarray, grid_um: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid nodes around ``centres_um`` and each centre's 4 corners and bilinear weights.

    Nodes lie at whole multiples of ``grid_um`` (microns); only those that are a corner of some centre's grid
    cell are returned, so the count follows the tissue, not its bounding box.

    Parameters
    ----------
    centres_um
        ``(n, 2)`` micron coordinates.
    grid_um
        Node spacing in microns.

    Returns
    -------
    ``(nodes (m, 2) microns, corners (n, 4) int64 indices into nodes, weights (n, 4) float32)``.

    Examples
    --------
    >>> nodes, corners, w = grid_nodes(np.array([[0.0, 0.0], [8.0, 24.0]]), 32.0)
    >>> len(nodes), w.sum(1).tolist()
    (4, [1.0, 1.0])
    """
    if not np.isfinite(grid_um) or grid_um <= 0:
        raise ValueError(f"grid_um must be a positive number of microns, got {grid_um!r}.")
    xy = np.asarray(centres_um, dtype=float).reshape(-1, 2)
    # nodes at whole multiples of grid_um: the same nodes whatever subset of the section is encoded (dask
    # partitions, a crop), so the features do not depend on it
    origin = np.floor(xy.min(0) / grid_um) * grid_um
    u = (xy - origin) / grid_um
    ij = np.floor(u).astype(np.int64)
    f = (u - ij).astype(np.float32)
    nx = int(ij[:, 0].max()) + 2
    # corners in the order (0,0), (1,0), (0,1), (1,1) of (dx, dy)
    keys = np.stack(
        [(ij[:, 1] + dy) * nx + (ij[:, 0] + dx) for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1))], axis=1
    )
    uniq, inverse = np.unique(keys.ravel(), return_inverse=True)
    nodes = origin + grid_um * np.c_[uniq % nx, uniq // nx].astype(float)
    fx, fy = f[:, 0], f[:, 1]
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    return nodes, inverse.reshape(-1, 4).astype(np.int64), weights.astype(np.float32)


def grid_plan(plan: dict, grid_um: float) -> tuple[dict, GridReadout, int]:
    """Turn a per-observation feature plan (see ``nichekd.pp._features._plan``) into one over grid nodes.

    Returns the node plan (its ``rows`` index a node array), the read-out and the number of nodes.
    """
    node_plan, rows, corners, weights, offset = {}, [], [], [], 0
    for name, p in plan.items():
        nodes, c, w = grid_nodes(p["centres"], grid_um)
        node_plan[name] = {**p, "rows": offset + np.arange(len(nodes)), "centres": nodes}
        rows.append(p["rows"])
        corners.append(c + offset)
        weights.append(w)
        offset += len(nodes)
    readout = GridReadout(np.concatenate(rows), np.concatenate(corners), np.concatenate(weights))
    return node_plan, readout, offset


def read_out(node_features: np.ndarray, readout: GridReadout, n_obs: int) -> np.ndarray:
    """``(n_obs, d)`` float32: every observation's bilinear mix of its 4 nodes' features."""
    out = np.zeros((n_obs, node_features.shape[1]), dtype=np.float32)
    # chunked so the (chunk, 4, d) gather stays small at a million observations
    step = 65_536
    for s in range(0, len(readout.rows), step):
        c, w = readout.corners[s : s + step], readout.weights[s : s + step]
        out[readout.rows[s : s + step]] = np.einsum("nk,nkd->nd", w, node_features[c])
    return out


#: ``grid_um="auto"``: the grid spacing as a fraction of the patch side (28 um for a 112 um patch); features of
#: patches a quarter patch apart overlap by three quarters, so the bilinear read-out loses little.
AUTO_GRID_FRACTION = 0.25
#: ``grid_um="auto"`` chooses the grid only when it makes at least this many times fewer encoder passes than
#: one patch per observation (Visium HD bins, cells packed closer than ~10 um); sparser observations
#: (Visium spots, cells of most tissues: 4-5x on the simulator) keep their own patches.
AUTO_GRID_MIN_SAVING = 8.0
#: ``grid_um="auto"`` chooses the grid only for at least this many observations in the call (a full Visium HD
#: section, ~660k 8 um bins: an hour of EfficientNet-Lite0 on a 2-core CPU with one patch each). Below it one
#: patch per observation is affordable and worth it: on the 15,611-bin kidney crop a 28 um grid lowered the
#: student's ARI from 0.211 to 0.146 (EfficientNet-Lite0, 3 seeds, ``benchmarks/bench_hd.py --grid-seeds``).
AUTO_GRID_MIN_OBSERVATIONS = 100_000


def auto_grid_um(centres: Mapping[str, np.ndarray], patch_size_um: float) -> tuple[float | None, str]:
    """The grid spacing ``grid_um="auto"`` means for these observations, and why.

    A grid of spacing ``AUTO_GRID_FRACTION * patch_size_um`` is chosen when there are at least
    ``AUTO_GRID_MIN_OBSERVATIONS`` observations, the grid's nodes (those around the observations, counted per
    section) are at least ``AUTO_GRID_MIN_SAVING`` times fewer, and every section spans several grid cells;
    otherwise ``None`` (one patch per observation).

    Parameters
    ----------
    centres
        Micron positions ``(n, 2)`` per section.
    patch_size_um
        Patch side in microns.

    Returns
    -------
    ``(grid_um or None, reason)``: the reason is recorded in the features' params.

    Examples
    --------
    >>> bins = np.mgrid[0:3200:8, 0:3200:8].reshape(2, -1).T.astype(float)  # 160,000 8 um bins, 3.2 mm
    >>> auto_grid_um({"s": bins}, 112.0)[0]
    28.0
    >>> auto_grid_um({"s": bins[:20_000]}, 112.0)[1].startswith("auto: one patch per observation (fewer than")
    True
    >>> spots = np.mgrid[0:2000:100, 0:2000:100].reshape(2, -1).T.astype(float)  # Visium-like spacing
    >>> auto_grid_um({"s": spots}, 112.0)[0] is None
    True
    """
    grid_um = float(patch_size_um) * AUTO_GRID_FRACTION
    sections = {lib: np.asarray(c, dtype=float).reshape(-1, 2) for lib, c in centres.items() if len(c)}
    n_obs = sum(len(c) for c in sections.values())
    if not sections:
        return None, "auto: no observations"
    small = [lib for lib, c in sections.items() if np.ptp(c, axis=0).max() < 4 * grid_um]
    nodes = sum(len(grid_nodes(c, grid_um)[0]) for c in sections.values())
    saving = n_obs / max(nodes, 1)
    counts = f"{n_obs:,} observations, {nodes:,} nodes of a {grid_um:g} um grid ({saving:.1f}x fewer patches)"
    few = n_obs < AUTO_GRID_MIN_OBSERVATIONS
    if saving >= AUTO_GRID_MIN_SAVING and not small and not few:
        return grid_um, f"auto: grid chosen, {counts}"
    why = (
        f"fewer than {AUTO_GRID_MIN_OBSERVATIONS:,} observations"
        if few
        else f"sections {small[:3]} span under 4 grid cells"
        if small
        else f"under {AUTO_GRID_MIN_SAVING:g}x"
    )
    return None, f"auto: one patch per observation ({why}; {counts})"


def resolve_grid_um(
    grid_um: float | str | None, centres: Mapping[str, np.ndarray], patch_size_um: float
) -> tuple[float | None, str]:
    """The spacing ``histology_features`` uses for its ``grid_um`` argument (``"auto"``, a number or ``None``),
    and the reason recorded with it (see :func:`auto_grid_um`)."""
    if grid_um == "auto":
        return auto_grid_um(centres, patch_size_um)
    if grid_um is None:
        return None, "given: one patch per observation"
    return float(grid_um), f"given: grid of {float(grid_um):g} um"
