"""Spatial neighbourhoods: one radius rule, one neighbour search, one exported graph."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
from scipy.spatial import cKDTree

from .validate import check_positive

# the neighbour count a radius is chosen for when none is given (the paper's "radius per dataset for a target
# neighbour count"): the teacher, the student and the baselines share it
DEFAULT_N_NEIGHBORS = 10
# neighbour tokens per cell at most: beyond this the lists' memory explodes for no gain
MAX_NEIGHBORS = 1024


def default_max_neighbors(n_neighbors_target: float) -> int:
    """The student's neighbour cap for a target count: twice the target (nearest first)."""
    return int(np.ceil(2 * float(n_neighbors_target)))


@dataclass
class Neighbourhoods:
    """Fixed-width neighbour lists: ``index[i, 0] == i``; ``-1`` pads cells with fewer neighbours."""

    index: np.ndarray  # (n, m) int64
    distance: np.ndarray  # (n, m) float32, inf where padded
    radius: float

    @property
    def mask(self) -> np.ndarray:
        """True where a neighbour exists."""
        return self.index >= 0

    def counts(self) -> np.ndarray:
        """Neighbours per cell, the cell itself excluded."""
        return self.mask.sum(1) - 1

    def offsets(self, xy: np.ndarray) -> np.ndarray:
        """``(n, m, 2)`` relative positions in microns (zero where padded). Use per batch for large n."""
        safe = np.where(self.mask, self.index, np.arange(len(self.index))[:, None])
        return np.where(self.mask[..., None], xy[safe] - xy[:, None, :], 0.0).astype(np.float32)


def group_codes(groups: np.ndarray | None, n: int) -> np.ndarray:
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    return np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].ravel()


def estimate_radius(
    xy: np.ndarray,
    n_neighbors_target: float,
    groups: np.ndarray | None = None,
    max_cells: int = 200_000,
    random_state: int = 0,
) -> float:
    """Radius (same units as ``xy``) at which the mean number of neighbours equals ``n_neighbors_target``.

    Neighbours are counted within each group only (cells of other sections never count). For large inputs
    a random subset of query cells estimates the mean (the trees still hold every cell).
    """
    xy = np.asarray(xy, dtype=float)
    n_neighbors_target = check_positive("n_neighbors_target", n_neighbors_target)
    codes = group_codes(groups, len(xy))
    k = int(np.ceil(n_neighbors_target * 2)) + 1
    rng = np.random.default_rng(random_state)
    dists = []
    for g in np.unique(codes):
        sel = np.flatnonzero(codes == g)
        if len(sel) < 2:
            continue
        tree = cKDTree(xy[sel])
        share = max(1, int(round(max_cells * len(sel) / len(xy))))
        q = rng.choice(sel, share, replace=False) if len(sel) > share else sel
        d, _ = tree.query(xy[q], k=min(k, len(sel)))
        d = d[:, 1:]  # drop self
        if d.shape[1] < k - 1:
            d = np.pad(d, ((0, 0), (0, k - 1 - d.shape[1])), constant_values=np.inf)
        dists.append(d)
    if not dists:
        raise ValueError("Too few cells to estimate a neighbourhood radius (need at least 2 per section).")
    d = np.concatenate(dists)
    finite = np.sort(d[np.isfinite(d)])
    # mean count within r = (#pairs with distance <= r) / n_cells: pick the distance at that rank
    rank = int(round(n_neighbors_target * len(d))) - 1
    rank = int(np.clip(rank, 0, len(finite) - 1))
    radius = float(finite[rank])
    if radius <= 0:
        raise ValueError(_zero_radius_message(xy, codes, n_neighbors_target))
    return radius


def _zero_radius_message(xy: np.ndarray, codes: np.ndarray, n_neighbors_target: float) -> str:
    """Why the estimated radius is 0: every observation at one position, or many duplicated positions."""
    spans = [np.ptp(xy[codes == g], axis=0).max() for g in np.unique(codes) if (codes == g).sum() > 1]
    if all(span == 0 for span in spans):
        return (
            "All observations share one position (within each section), so no neighbourhood radius exists: "
            "check obsm['spatial'] / the coordinates (a reader, a transform or units that collapsed them)."
        )
    n_unique = len(np.unique(xy, axis=0))
    return (
        f"Most observations share their position with at least {n_neighbors_target:g} others ({n_unique} "
        f"distinct positions for {len(xy)} observations), so the radius for n_neighbors_target="
        f"{n_neighbors_target:g} neighbours is 0: check obsm['spatial'] / the coordinates (duplicated rows?), "
        "or pass radius_um= explicitly."
    )


def warn_radius_extent(xy: np.ndarray, radius: float, codes: np.ndarray, max_neighbors: int) -> None:
    """Warn when ``radius`` exceeds the extent (bounding-box diagonal) of every group the neighbours are found
    in: every cell is then within the radius of every other, and a neighbourhood is just the nearest
    ``max_neighbors`` cells whatever their distance (a radius in the wrong units, or a typo)."""
    extents = [np.ptp(xy[codes == g], axis=0) for g in np.unique(codes) if (codes == g).sum() > 1]
    if not extents:
        return
    largest = max(extents, key=lambda e: float(np.hypot(*e[:2])))
    diagonal = float(np.hypot(*largest[:2]))
    if radius <= diagonal:
        return
    import warnings

    warnings.warn(
        f"The neighbourhood radius {radius:g} um exceeds the extent of every section (the largest is "
        f"{largest[0]:.4g} x {largest[1]:.4g} um, diagonal {diagonal:.4g} um): every cell is a neighbour of every "
        f"other, so a neighbourhood is just the nearest {max_neighbors} cells whatever their distance. Radii "
        "are in microns: pass radius_um= below the size of a section (a few cell or spot spacings), or leave "
        "radius_um=None to estimate it.",
        UserWarning,
        stacklevel=3,
    )


def radius_neighbours(
    xy: np.ndarray,
    radius: float,
    groups: np.ndarray | None = None,
    max_neighbors: int = 32,
) -> Neighbourhoods:
    """The cell itself plus up to ``max_neighbors`` nearest cells within ``radius``, never across groups.

    Memory is ``O(n * max_neighbors)``: no dense distance matrix is formed.
    """
    xy = np.asarray(xy, dtype=float)
    n = len(xy)
    if radius <= 0 or not np.isfinite(radius):
        raise ValueError(f"radius must be a positive finite number, got {radius}.")
    m = int(max_neighbors) + 1
    index = np.full((n, m), -1, dtype=np.int64)
    distance = np.full((n, m), np.inf, dtype=np.float32)
    codes = group_codes(groups, n)
    warn_radius_extent(xy, radius, codes, int(max_neighbors))
    for g in np.unique(codes):
        sel = np.flatnonzero(codes == g)
        tree = cKDTree(xy[sel])
        k = min(m, len(sel))
        d, j = tree.query(xy[sel], k=k, distance_upper_bound=radius * (1 + 1e-9))
        d = np.asarray(d).reshape(len(sel), k)
        j = np.asarray(j).reshape(len(sel), k)
        ok = np.isfinite(d)
        index[sel, :k] = np.where(ok, sel[np.minimum(j, len(sel) - 1)], -1)
        distance[sel, :k] = np.where(ok, d, np.inf)
    # the query point is its own nearest neighbour; ties at distance 0 (duplicate positions) may swap it
    self_first = index[:, 0] == np.arange(n)
    if not self_first.all():
        for i in np.flatnonzero(~self_first):
            row = index[i]
            pos = np.flatnonzero(row == i)
            if len(pos):
                row[[0, pos[0]]] = row[[pos[0], 0]]
            else:
                row[1:] = row[:-1].copy()
                row[0] = i
    return Neighbourhoods(index=index, distance=distance, radius=float(radius))


def neighbour_mean(
    features: np.ndarray,
    nbrs: Neighbourhoods,
    weights: str = "uniform",
    include_self: bool = True,
    chunk: int = 65_536,
) -> np.ndarray:
    """Mean of ``features`` over each neighbourhood, in chunks (no ``n x m x d`` tensor for all cells).

    ``weights="gaussian"`` weighs neighbours by ``exp(-d^2 / (2 (radius/2)^2))``.
    """
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    out = np.empty_like(x)
    sigma = nbrs.radius / 2.0
    for s in range(0, n, chunk):
        idx = nbrs.index[s : s + chunk]
        mask = idx >= 0
        if not include_self:
            mask[:, 0] = False
        if weights == "gaussian":
            w = np.exp(-(nbrs.distance[s : s + chunk].astype(np.float64) ** 2) / (2 * sigma**2))
            w = np.where(mask, w, 0.0)
        elif weights == "uniform":
            w = mask.astype(np.float64)
        else:
            raise ValueError(f"weights must be 'uniform' or 'gaussian', got {weights!r}.")
        denom = w.sum(1, keepdims=True)
        denom[denom == 0] = 1.0
        gathered = x[np.where(mask, idx, 0)]  # (chunk, m, d) for this chunk only
        out[s : s + chunk] = (np.einsum("nm,nmd->nd", w, gathered) / denom).astype(np.float32)
    return out


def store_spatial_graph(adata: ad.AnnData, nbrs: Neighbourhoods, *, key_added: str = "spatial") -> None:
    """Write the neighbourhoods a model used as squidpy's graph: the graph a model exports is the graph it used.

    ``obsp[f"{key_added}_connectivities"]`` (binary, row ``i`` marks the neighbours of cell ``i``: those within
    the radius, nearest first up to the model's cap, never across the groups it kept apart, the cell itself
    excluded) and ``obsp[f"{key_added}_distances"]`` (microns) are what ``squidpy.gr.nhood_enrichment``,
    ``squidpy.gr.spatial_autocorr`` or CellCharter read; ``uns[f"{key_added}_neighbors"]`` records the
    parameters as squidpy does. Where the cap cut a neighbour list the graph is not symmetric (it is the
    model's).

    Examples
    --------
    >>> nbrs = radius_neighbours(xy_um, 50.0, groups=libraries)  # doctest: +SKIP
    >>> store_spatial_graph(adata, nbrs)  # doctest: +SKIP
    """
    from scipy import sparse

    n = len(nbrs.index)
    keep = nbrs.mask.copy()
    keep[:, 0] = False  # column 0 is the cell itself
    rows = np.repeat(np.arange(n), keep.sum(1))
    cols, dist = nbrs.index[keep], nbrs.distance[keep].astype(np.float64)
    conn = sparse.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n, n))
    adata.obsp[f"{key_added}_connectivities"] = conn
    # explicit zeros kept: two cells at one position are neighbours at distance 0
    adata.obsp[f"{key_added}_distances"] = sparse.csr_matrix((dist, (rows, cols)), shape=(n, n))
    radius_um = float(nbrs.radius)
    max_neighbors = int(nbrs.index.shape[1] - 1)
    adata.uns[f"{key_added}_neighbors"] = {
        "connectivities_key": f"{key_added}_connectivities",
        "distances_key": f"{key_added}_distances",
        "params": {
            "coord_type": "generic",
            "radius": radius_um,
            "max_neighbors": max_neighbors,
            "units": "micrometer",
            "transform": "none",
        },
    }
