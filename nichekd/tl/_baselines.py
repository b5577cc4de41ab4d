"""Unsupervised niche baselines on the same histology features the student sees.

The paper compares the student with Leiden clustering of the image features and with the teacher's own
method run on image features instead of expression.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from .._elements import micron_coords
from .._layout import LIBRARY_KEY, TABLE_KEY, get_table, library_labels
from .._neighbors import estimate_radius, neighbour_mean, radius_neighbours
from .._utils import store_params
from ._distill import resolve_features_key

METHODS = ("leiden", "kmeans", "teacher")
# Leiden's exact kNN graph is quadratic in cells: above this, cluster a subsample and assign the rest
LEIDEN_MAX_CELLS = 50_000


def _neighbourhood_features(
    adata: ad.AnnData,
    xy: np.ndarray,
    feats: np.ndarray,
    radius_um: float | None,
    n_neighbors_target: float,
    library_key: str,
    random_state: int,
) -> tuple[np.ndarray, float]:
    """``[own, neighbourhood mean]`` features, neighbourhoods within each section."""
    libs = np.asarray(library_labels(adata, library_key)).astype(str)
    if radius_um is None:
        radius_um = estimate_radius(xy, n_neighbors_target, groups=libs, random_state=random_state)
    nbrs = radius_neighbours(xy, radius_um, groups=libs, max_neighbors=int(np.ceil(2 * n_neighbors_target)))
    return np.hstack([feats, neighbour_mean(feats, nbrs)]), float(radius_um)


def _pca(x: np.ndarray, n_comps: int, random_state: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n_comps = int(min(n_comps, x.shape[1], x.shape[0] - 1))
    x = (x - x.mean(0)) / np.where(x.std(0) > 1e-6, x.std(0), 1.0)
    return PCA(n_comps, random_state=random_state).fit_transform(x).astype(np.float32)


def leiden_n_clusters(
    rep: np.ndarray,
    n_clusters: int,
    *,
    n_neighbors: int = 15,
    random_state: int = 0,
    max_steps: int = 20,
    max_cells: int | None = None,
) -> tuple[np.ndarray, float]:
    """Leiden on a kNN graph of ``rep`` (``sc.pp.neighbors``, Gaussian kernel), bisecting the resolution until there are ``n_clusters`` clusters.

    Returns the labels and the resolution; the closest count is kept when no resolution hits it exactly. With
    more than ``max_cells`` rows, Leiden runs on a random subsample of ``max_cells`` and every other row takes
    the cluster of the nearest cluster centroid (the exact kNN graph grows with the square of the rows).

    Examples
    --------
    >>> labels, resolution = leiden_n_clusters(np.random.rand(500, 10), 5)  # doctest: +SKIP
    """
    import scanpy as sc

    if max_cells is not None and len(rep) > max_cells:
        pick = np.sort(np.random.default_rng(random_state).choice(len(rep), int(max_cells), replace=False))
        sub, resolution = leiden_n_clusters(
            rep[pick], n_clusters, n_neighbors=n_neighbors, random_state=random_state, max_steps=max_steps
        )
        names, codes = np.unique(sub, return_inverse=True)
        centroids = np.stack([rep[pick][codes == k].mean(0) for k in range(len(names))])
        labels = names[_nearest(rep, centroids)]
        labels[pick] = sub
        return labels, resolution
    tmp = ad.AnnData(np.zeros((len(rep), 0), dtype=np.float32))
    tmp.obsm["X_rep"] = rep
    # exact sklearn kNN + Gaussian kernel: same graph quality, and no minute-long numba compilation (UMAP)
    sc.pp.neighbors(
        tmp,
        n_neighbors=n_neighbors,
        use_rep="X_rep",
        random_state=random_state,
        transformer="sklearn",
        method="gauss",
    )
    lo, hi = 0.0, 1.0
    best: tuple[int, np.ndarray, float] | None = None

    def run(res: float) -> np.ndarray:
        sc.tl.leiden(
            tmp,
            resolution=res,
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=random_state,
            key_added="_leiden",
        )
        return tmp.obs["_leiden"].to_numpy()

    # grow the upper bound until it gives enough clusters
    for _ in range(8):
        labels = run(hi)
        n = len(np.unique(labels))
        best = (abs(n - n_clusters), labels, hi) if best is None or abs(n - n_clusters) < best[0] else best
        if n >= n_clusters:
            break
        lo, hi = hi, hi * 2
    for _ in range(max_steps):
        if best[0] == 0:
            break
        mid = (lo + hi) / 2
        labels = run(mid)
        n = len(np.unique(labels))
        if abs(n - n_clusters) < best[0]:
            best = (abs(n - n_clusters), labels, mid)
        if n < n_clusters:
            lo = mid
        else:
            hi = mid
    return best[1], float(best[2])


def _nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Index of the nearest centroid of every row (chunked: memory stays ``chunk x k``)."""
    c2 = (centroids**2).sum(1)
    return np.concatenate(
        [np.argmin(c2 - 2 * x[s : s + chunk] @ centroids.T, axis=1) for s in range(0, len(x), chunk)]
    )


def histology_baseline(
    sdata,
    *,
    method: str = "leiden",
    n_niches: int,
    features_key: str | None = None,
    neighbourhood: bool = False,
    radius_um: float | None = None,
    n_neighbors_target: float = 10.0,
    n_comps: int = 50,
    key_added: str | None = None,
    library_key: str = LIBRARY_KEY,
    table_key: str = TABLE_KEY,
    random_state: int = 0,
    max_cells: int | None = LEIDEN_MAX_CELLS,
    copy: bool = False,
) -> ad.AnnData | None:
    """Niches from histology features alone, without a teacher: the baselines the student must beat.

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` or its table.
    method
        ``"leiden"`` (PCA, kNN graph, Leiden with the resolution bisected to ``n_niches`` clusters),
        ``"kmeans"`` (k-means on the PCA) or ``"teacher"`` (``nk.tl.teacher_niches`` with
        ``use_rep=features_key``: the teacher's method on image features instead of expression).
    n_niches
        Number of niches ``K``.
    features_key
        ``obsm`` key of the histology features; default the only one ``nk.pp.histology_features`` wrote.
    neighbourhood
        Cluster ``[own, neighbourhood-mean]`` features (``leiden``/``kmeans``); the ``teacher`` method
        aggregates neighbourhoods itself.
    radius_um, n_neighbors_target
        Neighbourhood radius in microns (default: estimated for ``n_neighbors_target`` neighbours).
    n_comps
        Principal components for ``leiden``/``kmeans``.
    key_added
        ``obs`` column written (categorical); default ``f"he_{method}_niche"`` (``he_leiden_niche``, ...).
    library_key
        ``obs`` column with the section of each cell.
    table_key
        Table of ``sdata``.
    random_state
        Seed.
    max_cells
        ``leiden`` only: above this many cells, Leiden runs on a random subsample of ``max_cells`` and the other
        cells take the cluster of the nearest cluster centroid (the exact kNN graph is quadratic in cells: a
        full Visium HD section would take hours). ``None``: every cell in the graph.
    copy
        Return a modified copy of the table instead of writing in place.

    Returns
    -------
    The modified table if ``copy=True``, else ``None``.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.tl.histology_baseline(sdata, method="leiden", n_niches=6, features_key="he_features")
    >>> nk.tl.histology_baseline(sdata, method="teacher", n_niches=6, features_key="he_features")
    """
    adata = get_table(sdata, table_key)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    features_key = resolve_features_key(adata, features_key)
    if features_key not in adata.obsm:
        raise KeyError(
            f"No histology features in obsm[{features_key!r}]; run nk.pp.histology_features first. "
            f"obsm has {sorted(adata.obsm.keys())}."
        )
    feats = np.asarray(adata.obsm[features_key], dtype=np.float32)
    if feats.ndim != 2 or len(feats) != adata.n_obs:
        raise ValueError(f"obsm[{features_key!r}] must be (n_cells, n_features), got {feats.shape}.")
    if not np.isfinite(feats).all():
        raise ValueError(f"obsm[{features_key!r}] has NaN or infinite values; drop those cells or recompute.")
    if int(n_niches) < 2 or int(n_niches) >= adata.n_obs:
        raise ValueError(f"n_niches must be in [2, n_cells), got {n_niches} for {adata.n_obs} cells.")
    key_added = key_added or f"he_{method}_niche"
    params = {
        "method": method,
        "n_niches": int(n_niches),
        "features_key": features_key,
        "neighbourhood": neighbourhood,
        "n_comps": n_comps,
        "random_state": random_state,
    }
    extra = {}
    if method == "teacher":
        from ._teacher import teacher_niches

        # the teacher writes its own outputs; run it on a copy so that nothing is written on failure
        work = adata.copy()
        teacher_niches(
            work,
            n_niches,
            method="aggregate",
            use_rep=features_key,
            key_added=key_added,
            random_state=random_state,
        )
        # renamed C0.. like the other baselines: unsupervised labels are not the teacher's niches
        codes = work.obs[key_added].cat.codes.to_numpy()
        labels = np.asarray([f"C{int(c)}" for c in codes], dtype=object)
        extra["teacher_params"] = dict(work.uns.get(key_added, {}).get("params", {}))
    else:
        x = feats
        if neighbourhood:
            x, radius = _neighbourhood_features(
                adata,
                micron_coords(sdata, table_key=table_key, library_key=library_key),
                feats,
                radius_um,
                n_neighbors_target,
                library_key,
                random_state,
            )
            params["radius_um"] = radius
        rep = _pca(x, n_comps, random_state)
        if method == "leiden":
            codes, resolution = leiden_n_clusters(
                rep, int(n_niches), random_state=random_state, max_cells=max_cells
            )
            params["resolution"] = resolution
            params["max_cells"] = max_cells
        else:
            from sklearn.cluster import KMeans

            codes = KMeans(int(n_niches), n_init=10, random_state=random_state).fit_predict(rep)
        labels = np.asarray([f"C{int(c)}" for c in codes], dtype=object)

    if copy:
        adata = adata.copy()
    cats = sorted(set(labels), key=lambda s: (len(s), s))
    adata.obs[key_added] = pd.Categorical(labels, categories=cats)
    params["n_found"] = len(cats)
    store_params(adata, key_added, params, **extra)
    return adata if copy else None
