"""Fallback cell types: Leiden clusters of expression, when no annotation exists."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import TABLE_KEY
from .._core.records import claim, store_params
from .._core.runtime import keep_torch_threads
from .._core.table import get_table


def _knn_graph(x: np.ndarray, k: int):
    """Symmetric, unweighted kNN graph (CSR) of the rows of ``x``."""
    from scipy import sparse
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    n = len(x)
    graph = sparse.csr_matrix((np.ones(idx.size), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    return graph.maximum(graph.T).tocsr()


@inject_docs
@keep_torch_threads()  # scanpy/squidpy's numba kernels reset torch's OpenMP threads
def cell_types(
    sdata: Any,
    *,
    resolution: float = 1.0,
    table_key: str = TABLE_KEY,
    use_rep: str | None = None,
    n_comps: int = 30,
    n_neighbors: int = 15,
    key_added: str = "cell_type",
    random_state: int = 0,
    copy: bool = False,
    overwrite: bool = False,
) -> ad.AnnData | None:
    """Leiden clusters of expression as stand-in cell types (a documented fallback, not an annotation).

    Counts are normalised to 10,000 per cell and log-transformed, reduced by PCA (or ``obsm[use_rep]`` is
    used as given), then clustered with Leiden on a k-nearest-neighbour graph. On spot data (Visium, ST)
    clusters mix cell types; prefer a deconvolution's fractions (``obsm['cell_type_fractions']``) there.
    Note that ``sc.pp.neighbors`` compiles for up to a minute the first time it runs in a process.

    Parameters
    ----------
    sdata
        SpatialData in the nichekd layout, or its table with raw counts in ``X``.
    resolution
        Leiden resolution (higher: more clusters).
    table_key
        %(table_key)s
    use_rep
        ``obsm`` key of a latent to cluster instead of the expression PCA.
    n_comps
        PCA components.
    n_neighbors
        Neighbours of the kNN graph.
    key_added
        ``obs`` column of the clusters (categorical ``C0, C1, ...``); parameters in ``uns[key_added]``.
    random_state
        %(random_state)s
    copy
        %(copy)s
    overwrite
        %(overwrite)s

    Returns
    -------
    ``None``, or the table with ``copy=True``.

    Examples
    --------
    >>> nk.pp.cell_types(sdata, resolution=0.8)
    >>> nk.tl.teacher_niches(sdata, n_niches=6, method="composition", cell_type_key="cell_type")
    """
    _val.check_positive("resolution", resolution)
    _val.check_int("n_comps", n_comps)
    _val.check_int("n_neighbors", n_neighbors)
    _val.check_seed("random_state", random_state)
    import scanpy as sc

    from ..models.teacher import COUNTS_FIX, log_normalise

    adata = get_table(sdata, table_key)
    written = claim(adata, [("obs", key_added), ("uns", key_added)], writer="cell_types", overwrite=overwrite)
    if adata.n_obs < 3:
        raise ValueError(f"Need at least 3 cells to cluster, got {adata.n_obs}.")
    work = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names))
    if use_rep is not None:
        if use_rep not in adata.obsm:
            raise KeyError(f"use_rep={use_rep!r} is not in obsm; available: {list(adata.obsm)}.")
        rep = np.asarray(adata.obsm[use_rep], dtype=np.float32)
        if not np.isfinite(rep).all():
            raise ValueError(f"obsm[{use_rep!r}] has NaN or infinite values.")
        work.obsm["X_rep"] = rep
    else:
        _val.check_counts(adata.X, "X", fix=COUNTS_FIX)
        _val.check_zero_counts(adata.X, "X")  # all-zero counts give one cluster
        # work on a private copy: the user's X is never normalised in place
        work = ad.AnnData(X=log_normalise(adata.X), obs=pd.DataFrame(index=adata.obs_names))
        n = int(min(n_comps, work.n_obs - 1, work.n_vars - 1))
        sc.pp.pca(work, n_comps=n, random_state=random_state)
        work.obsm["X_rep"] = work.obsm["X_pca"]
    adjacency = _knn_graph(work.obsm["X_rep"], min(n_neighbors, work.n_obs - 1))
    sc.tl.leiden(
        work,
        resolution=resolution,
        random_state=random_state,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        adjacency=adjacency,
    )
    codes = work.obs["leiden"].astype(int).to_numpy()
    # name clusters by decreasing size so names do not depend on Leiden's internal numbering
    order = np.argsort(-np.bincount(codes), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    names = [f"C{i}" for i in range(len(order))]

    target = adata.copy() if copy else adata
    target.obs[key_added] = pd.Categorical.from_codes(rank[codes], categories=names)
    store_params(
        target,
        key_added,
        {
            "method": "leiden",
            "resolution": resolution,
            "use_rep": use_rep,
            "n_comps": n_comps,
            "n_neighbors": n_neighbors,
            "random_state": random_state,
        },
        claim=written,
    )
    return target if copy else None
