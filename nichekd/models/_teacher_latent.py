"""Per-cell inputs of the teacher: the expression latent, its standardisation, neighbourhood means.

Part of :mod:`nichekd.models.teacher` (preprocessing); the heads are in :mod:`._teacher_heads`, persistence in
:mod:`._teacher_io`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import sparse

from .._core.neighbors import Neighbourhoods, neighbour_mean
from .._core.validate import check_counts  # noqa: F401  (one rule for counts, re-exported here)

TARGET_SUM = 1e4
_CHUNK = 65_536


def log_normalise(x: Any, target_sum: float = TARGET_SUM) -> sparse.csr_matrix:
    """``log1p(counts / total * target_sum)`` as float32 CSR (cells with zero counts stay zero).

    scanpy's ``normalize_total`` + ``log1p`` (one implementation across scverse; identical to the hand-written
    version it replaced up to float rounding, 5e-7 measured).
    """
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(sparse.csr_matrix(x, dtype=np.float32, copy=True))
    with warnings.catch_warnings():  # cells without counts: check_zero_counts decides when to warn, and how
        warnings.filterwarnings("ignore", message="Some cells have zero counts", category=UserWarning)
        sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    return sparse.csr_matrix(tmp.X, dtype=np.float32)


def highly_variable(x: sparse.csr_matrix, n_top_genes: int) -> np.ndarray:
    """Sorted column indices of the ``n_top_genes`` most variable genes of log-normalised ``x`` (all genes when
    there are no more): scanpy's ``highly_variable_genes(flavor="seurat")``, normalised dispersion per mean bin.

    Why scanpy's and not the plain variance ranking used before: on synthetic tissue (6,000 cells, 400 genes, K=5,
    3 seeds) the teacher's ARI against the true niches was 0.887 vs 0.808 with 200 genes kept and 0.646 vs 0.632
    with 100.
    """
    import anndata as ad
    import scanpy as sc

    if n_top_genes >= x.shape[1]:
        return np.arange(x.shape[1])
    hv = sc.pp.highly_variable_genes(
        ad.AnnData(x), n_top_genes=int(n_top_genes), flavor="seurat", inplace=False
    )
    return np.sort(np.flatnonzero(hv["highly_variable"].to_numpy()))


def fit_expression_pca(
    x: sparse.csr_matrix, n_comps: int, n_top_genes: int, max_cells: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Select the highly variable genes and fit a centred PCA on a subsample of (log-normalised) cells.

    The PCA is scikit-learn's (the same as scanpy's ``pca`` with ``svd_solver="covariance_eigh"``), kept here
    because the teacher stores the gene names, mean and components to project new sections and saved models
    exactly as the fitting data; ``sc.pp.pca`` does not keep the mean.
    """
    from sklearn.decomposition import PCA

    genes = highly_variable(x, n_top_genes)
    rows = (
        np.sort(rng.choice(x.shape[0], max_cells, replace=False)) if x.shape[0] > max_cells else slice(None)
    )
    sub = x[rows][:, genes]
    n_comps = int(min(n_comps, sub.shape[0] - 1, sub.shape[1] - 1))
    if n_comps < 1:
        raise ValueError("Too few cells or genes for a PCA latent; pass use_rep= with a precomputed latent.")
    # covariance_eigh handles sparse input without densifying and is fast for a few thousand genes
    pca = PCA(n_components=n_comps, svd_solver="covariance_eigh", random_state=0).fit(sub)
    comps = pca.components_.astype(np.float32)
    # deterministic sign: largest loading positive
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    return {"genes": genes, "mean": pca.mean_.astype(np.float32), "components": comps * signs[:, None]}


def project_expression(x: sparse.csr_matrix, pca: dict[str, np.ndarray]) -> np.ndarray:
    """Project log-normalised cells on the fitted components, in chunks (memory linear in cells)."""
    comps = pca["components"].T
    offset = pca["mean"] @ comps
    sub = x[:, pca["genes"]]
    out = np.empty((x.shape[0], comps.shape[1]), dtype=np.float32)
    for s in range(0, x.shape[0], _CHUNK):
        out[s : s + _CHUNK] = np.asarray(sub[s : s + _CHUNK] @ comps) - offset
    return out


def standardise(latent: np.ndarray, state: dict[str, np.ndarray], codes: np.ndarray | None) -> np.ndarray:
    """Centre and scale by one global scalar; with ``codes``, centre/scale each library first (batch-aware).

    Per-library z-scores are multiplied back by the global per-dimension spread so that dimensions keep their
    relative weight (PCA's leading components stay leading).
    """
    x = latent.astype(np.float32, copy=True)
    if codes is not None:
        for c in np.unique(codes):
            sel = codes == c
            mu = x[sel].mean(0)
            sd = x[sel].std(0)
            sd[sd == 0] = 1.0
            x[sel] = (x[sel] - mu) / sd * state["sd"]
    else:
        x -= state["mean"]
    return x / state["scale"]


def _standardise_state(latent: np.ndarray) -> dict[str, np.ndarray]:
    sd = latent.std(0).astype(np.float32)
    scale = float(np.sqrt(np.mean(sd**2))) or 1.0
    sd[sd == 0] = 1.0
    return {"mean": latent.mean(0).astype(np.float32), "sd": sd, "scale": np.float32(scale)}


def neighbourhood_features(
    latent: np.ndarray, nbrs: Neighbourhoods, n_rings: int = 1, weights: str = "gaussian"
) -> np.ndarray:
    """Distance-weighted neighbourhood means; with ``n_rings > 1`` the means of successive hops, concatenated.

    Hop ``r`` is the neighbourhood mean of hop ``r - 1`` (CellCharter-style multi-scale context); memory stays
    ``O(n * d * n_rings)``.
    """
    hops = [neighbour_mean(latent, nbrs, weights=weights)]
    for _ in range(1, n_rings):
        hops.append(neighbour_mean(hops[-1], nbrs, weights=weights))
    return np.concatenate(hops, axis=1) if len(hops) > 1 else hops[0]
