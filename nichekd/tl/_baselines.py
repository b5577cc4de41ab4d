"""Unsupervised niche baselines on the same histology features the student sees.

The paper compares the student with Leiden clustering of the image features and with the teacher's own
method run on image features instead of expression.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.feature_record import resolve_features_key
from .._core.keys import LIBRARY_KEY, SPLIT_KEY, TABLE_KEY
from .._core.neighbors import (
    DEFAULT_N_NEIGHBORS,
    default_max_neighbors,
    estimate_radius,
    neighbour_mean,
    radius_neighbours,
)
from .._core.records import claim, store_params
from .._core.reduction import fit_whitened_pca
from .._core.runtime import keep_torch_threads
from .._core.spatial import micron_coords
from .._core.table import get_table, library_labels
from ..pp._split import resolve_split_key, split_groups, split_record

METHODS = ("leiden", "kmeans", "teacher")
# Leiden's exact kNN graph is quadratic in cells: above this, cluster a subsample and assign the rest
LEIDEN_MAX_CELLS = 50_000
# a regulariser on the mixture's covariance diagonals (whitened inputs: unit variance per component), then
# a diagonal covariance: low-resolution image features can have near-collinear neighbourhood means
_COVARIANCES = (("full", 1e-3), ("diag", 1e-3))


def _neighbourhood_features(
    xy: np.ndarray,
    feats: np.ndarray,
    groups: np.ndarray,
    fit: np.ndarray,
    radius_um: float | None,
    n_neighbors_target: float,
    random_state: int,
) -> tuple[np.ndarray, float]:
    """``[own, neighbourhood mean]`` features, neighbourhoods within each group (section and split part)."""
    if radius_um is None:
        radius_um = estimate_radius(
            xy[fit], n_neighbors_target, groups=groups[fit], random_state=random_state
        )
    nbrs = radius_neighbours(
        xy, radius_um, groups=groups, max_neighbors=default_max_neighbors(n_neighbors_target)
    )
    return np.hstack([feats, neighbour_mean(feats, nbrs)]), float(radius_um)


def _pca(x: np.ndarray, n_comps: int, random_state: int, fit: np.ndarray) -> np.ndarray:
    """Standardise and project on principal components, both fitted on the rows in ``fit``."""
    from sklearn.decomposition import PCA

    n_comps = int(min(n_comps, x.shape[1], int(fit.sum()) - 1))
    mu, sd = x[fit].mean(0), x[fit].std(0)
    x = (x - mu) / np.where(sd > 1e-6, sd, 1.0)
    return PCA(n_comps, random_state=random_state).fit(x[fit]).transform(x).astype(np.float32)


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
        return _extend_to_nearest_centroid(rep, pick, sub), resolution
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


def _extend_to_nearest_centroid(rep: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels for every row of ``rep``: ``labels`` on the clustered ``rows`` (indices or a mask), the cluster
    of the nearest centroid elsewhere."""
    names, inverse = np.unique(labels, return_inverse=True)
    centroids = np.stack([rep[rows][inverse == k].mean(0) for k in range(len(names))])
    out = names[_nearest(rep, centroids)]
    out[rows] = labels
    return out


def _nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Index of the nearest centroid of every row (chunked: memory stays ``chunk x k``)."""
    c2 = (centroids**2).sum(1)
    return np.concatenate(
        [np.argmin(c2 - 2 * x[s : s + chunk] @ centroids.T, axis=1) for s in range(0, len(x), chunk)]
    )


@inject_docs
@keep_torch_threads()  # scanpy/squidpy's numba kernels reset torch's OpenMP threads
def histology_baseline(
    sdata,
    *,
    method: str = "leiden",
    n_niches: int,
    features_key: str | None = None,
    neighbourhood: bool = False,
    radius_um: float | None = None,
    n_neighbors_target: float = DEFAULT_N_NEIGHBORS,
    n_comps: int = 50,
    teacher_key: str = "teacher_niche",
    teacher_method: str | None = None,
    n_components: int | None = 32,
    split_key: str | None = SPLIT_KEY,
    key_added: str | None = None,
    library_key: str = LIBRARY_KEY,
    table_key: str = TABLE_KEY,
    random_state: int = 0,
    max_cells: int | None = LEIDEN_MAX_CELLS,
    copy: bool = False,
    overwrite: bool = False,
) -> ad.AnnData | None:
    """Niches from histology features alone, without a teacher: the baselines the student must beat.

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` or its table.
    method
        ``"leiden"`` (PCA, kNN graph, Leiden with the resolution bisected to ``n_niches`` clusters),
        ``"kmeans"`` (k-means on the PCA) or ``"teacher"``: the teacher's own method (its Gaussian mixture on
        neighbourhood means, or its transformer) on the image features after the reduction the student gets
        (standardised, ``n_components`` whitened principal components), with a regularised covariance.
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
    teacher_key
        %(teacher_key)s
    teacher_method
        Overrides the method read from ``teacher_key`` (``"aggregate"`` or ``"transformer"``).
    n_components
        For ``"teacher"``: whitened principal components kept, as ``nk.tl.distill(n_components=)``.
    split_key
        %(split_key)s
        The default ``"split"`` is used when the table has that column: every fit (the features'
        standardisation, the PCA, the clustering or mixture) uses the training cells only, as the student's
        does, the other cells take the fitted model's label, and neighbourhoods stay within each section and
        split part, so test labels never depend on training, buffer or other-part features. ``None``: the
        transductive variant, fitted on every cell with neighbourhoods across the split (not comparable with
        the student; recorded as ``fitted_on="all"``).
    key_added
        ``obs`` column written (categorical); default ``f"he_{method}_niche"`` (``he_leiden_niche``, ...).
    library_key
        %(library_key)s
    table_key
        %(table_key)s
    random_state
        %(random_state)s
    max_cells
        ``leiden`` only: above this many cells, Leiden runs on a random subsample of ``max_cells`` and the other
        cells take the cluster of the nearest cluster centroid (the exact kNN graph is quadratic in cells: a
        full Visium HD section would take hours). ``None``: every cell in the graph.
    copy
        %(copy)s
    overwrite
        %(overwrite)s

    Returns
    -------
    The modified table if ``copy=True``, else ``None``.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.tl.histology_baseline(sdata, method="leiden", n_niches=6, features_key="he_features")
    >>> nk.tl.histology_baseline(sdata, method="teacher", n_niches=6, features_key="he_features")
    """
    _val.check_choice("method", method, METHODS)
    _val.check_choice("teacher_method", teacher_method, (None, "aggregate", "transformer"))
    _val.check_int("n_niches", n_niches, minimum=2)
    _val.check_optional_positive("radius_um", radius_um, unit="microns")
    _val.check_positive("n_neighbors_target", n_neighbors_target)
    _val.check_int("n_comps", n_comps)
    _val.check_optional_int("n_components", n_components)
    _val.check_seed("random_state", random_state)
    if max_cells is not None and _val.check_int("max_cells", max_cells, minimum=2) <= n_niches:
        raise ValueError(f"max_cells must be larger than n_niches ({n_niches}), got {max_cells!r}.")
    adata = get_table(sdata, table_key)
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
    written = claim(
        adata, [("obs", key_added), ("uns", key_added)], writer="histology_baseline", overwrite=overwrite
    )
    params = {
        "method": method,
        "n_niches": int(n_niches),
        "features_key": features_key,
        "neighbourhood": neighbourhood,
        "n_comps": n_comps,
        "random_state": random_state,
    }
    xy_um = micron_coords(sdata, table_key=table_key, library_key=library_key)
    split_key = resolve_split_key(adata, split_key)  # no split: fitted on every cell
    split = None if split_key is None else adata.obs[split_key].astype(str).to_numpy()
    fit = np.ones(adata.n_obs, bool) if split is None else split == "train"
    if int(fit.sum()) <= int(n_niches):
        raise ValueError(
            f"{int(fit.sum())} training cells in obs[{split_key!r}] for {n_niches} niches; the baseline is "
            "fitted on training cells: use a split with more of them."
        )
    libs = library_labels(adata, library_key)
    if neighbourhood or method == "teacher":  # before any neighbour list is allocated
        names, sizes = np.unique(np.asarray(libs).astype(str)[fit], return_counts=True)
        _val.check_neighbour_target(
            n_neighbors_target, dict(zip(names.tolist(), sizes.tolist(), strict=True)), unit="training cells"
        )
    groups = split_groups(libs, split)
    params["split_key"] = split_key
    params["fitted_on"] = "all" if split is None else "train"
    params.update(split_record(adata, split_key))  # the split it fitted on, for evaluate
    if method == "teacher":
        codes, info = _same_method_baseline(
            adata,
            xy_um,
            feats,
            int(n_niches),
            teacher_key=teacher_key,
            teacher_method=teacher_method,
            n_components=n_components,
            radius_um=radius_um,
            n_neighbors_target=n_neighbors_target,
            library_key=library_key,
            split_key=split_key,
            fit=fit,
            random_state=random_state,
        )
        params.update(info)
        # named C0.. like the other baselines: unsupervised labels are not the teacher's niches
        labels = np.asarray([f"C{int(c)}" for c in codes], dtype=object)
    else:
        x = feats
        if neighbourhood:
            x, radius = _neighbourhood_features(
                xy_um, feats, groups, fit, radius_um, n_neighbors_target, random_state
            )
            params["radius_um"] = radius
        rep = _pca(x, n_comps, random_state, fit)
        if method == "leiden":
            fit_codes, resolution = leiden_n_clusters(
                rep[fit], int(n_niches), random_state=random_state, max_cells=max_cells
            )
            # cells outside the fit take the cluster of the nearest centroid, as above max_cells
            codes = _extend_to_nearest_centroid(rep, fit, fit_codes)
            params["resolution"] = resolution
            params["max_cells"] = max_cells
        else:
            from sklearn.cluster import KMeans

            codes = KMeans(int(n_niches), n_init=10, random_state=random_state).fit(rep[fit]).predict(rep)
        labels = np.asarray([f"C{int(c)}" for c in codes], dtype=object)

    if copy:
        adata = adata.copy()
    cats = sorted(set(labels), key=lambda s: (len(s), s))
    adata.obs[key_added] = pd.Categorical(labels, categories=cats)
    params["n_found"] = len(cats)
    store_params(adata, key_added, params, claim=written)
    return adata if copy else None


def _same_method_baseline(
    adata: ad.AnnData,
    xy_um: np.ndarray,
    feats: np.ndarray,
    n_niches: int,
    *,
    teacher_key: str,
    teacher_method: str | None,
    n_components: int | None,
    radius_um: float | None,
    n_neighbors_target: float,
    library_key: str,
    split_key: str | None,
    fit: np.ndarray,
    random_state: int,
) -> tuple[np.ndarray, dict]:
    """The teacher's method on image features reduced as the student's are; niche codes and what was run."""
    from ..models.teacher import NicheTeacher

    recorded = adata.uns.get(teacher_key, {}).get("params", {}) if teacher_key in adata.uns else {}
    method = teacher_method or recorded.get("method", "aggregate")
    if method not in ("aggregate", "transformer", "composition", "labels"):
        raise ValueError(f"teacher_method must be 'aggregate' or 'transformer', got {method!r}.")
    if method in ("composition", "labels"):
        method = "aggregate"  # image features have no cell types or labels: the mixture on their latent
    # the student's reduction (one implementation): standardised, whitened principal components
    reduction = fit_whitened_pca(feats, fit, n_components, np.random.default_rng(random_state))
    work = ad.AnnData(obs=adata.obs.copy())  # the labels the teacher groups by; no expression needed
    work.obsm["_he_reduced"] = reduction.transform(feats)
    common = {
        "method": method,
        "use_rep": "_he_reduced",
        "library_key": library_key,
        "split_key": split_key,
        "radius_um": radius_um if radius_um is not None else recorded.get("radius_um"),
        "n_neighbors_target": n_neighbors_target,
        "random_state": random_state,
        "progress": False,
    }
    last_error: Exception | None = None
    for covariance_type, reg_covar in _COVARIANCES if method == "aggregate" else (("full", 1e-4),):
        teacher = NicheTeacher(n_niches, covariance_type=covariance_type, reg_covar=reg_covar, **common)
        try:
            # fitted on the training cells, then every cell labelled within its (section, split part)
            fit_inputs = teacher.prepare(work[fit].copy(), fit=True, xy_um=xy_um[fit])
            teacher.fit_head(fit_inputs)
            inputs = fit_inputs if fit.all() else teacher.prepare(work, xy_um=xy_um)
        except ValueError as err:  # sklearn: "Fitting the mixture model failed ... ill-defined covariance"
            if "ill-defined" not in str(err):
                raise
            last_error = err
            continue
        codes = teacher.proba_from_inputs(inputs).argmax(1)
        info = {
            "teacher_method": method,
            "n_components": reduction.n_outputs,
            "covariance_type": covariance_type if method == "aggregate" else None,
            "reg_covar": reg_covar if method == "aggregate" else None,
            "radius_um": teacher.radius_um_,
        }
        return codes, info
    raise ValueError(
        f"The mixture failed on these features even with a diagonal covariance ({last_error}); the features "
        "are degenerate (constant or duplicated): check obsm[features_key]."
    )
