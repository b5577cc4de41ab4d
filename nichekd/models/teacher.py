"""The fitted teacher: spatial niches from a neighbourhood representation of each cell or spot.

:class:`NicheTeacher` is the object behind :func:`nichekd.tl.teacher_niches` (sklearn-like ``fit`` /
``predict_proba`` / ``predict`` / ``save`` / ``load``). Four methods share one pipeline:

1. a per-cell **latent**: PCA of log-normalised counts, or any ``obsm`` representation (``use_rep``, e.g. an
   scVI latent or H&E features; used as given, no normalisation), optionally centred/scaled per library
   (``batch_correct``); or cell-type one-hot/fractions (``"composition"``); or an ``obs`` column (``"labels"``);
2. a **neighbourhood** of each cell (:mod:`nichekd._neighbors`): a radius in microns, estimated so that the
   mean neighbour count hits ``n_neighbors_target`` (or given), never crossing libraries, reused at predict time;
3. a **head** with K niches: a Gaussian mixture on distance-weighted neighbourhood means (``"aggregate"``,
   ``"composition"``; multi-hop means concatenated with ``n_rings > 1``, CellCharter-style), the
   self-supervised :mod:`niche transformer <nichekd.models._niche_transformer>` (``"transformer"``), or one-hot
   targets (``"labels"``).

Niches are named ``N0, N1, ...`` by decreasing size in the fitting data (mixture weight, or cluster mass), so
the names are deterministic for a given input and seed. Saved models are a folder with ``teacher.json`` and
``teacher.safetensors`` (plus ``transformer.safetensors``): no pickle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import logsumexp
from tqdm.auto import tqdm

from .._layout import LIBRARY_KEY, SPATIAL_KEY, library_labels, spatial_coords
from .._neighbors import Neighbourhoods, estimate_radius, neighbour_mean, radius_neighbours

METHODS = ("aggregate", "composition", "transformer", "labels")
DEFAULT_N_NEIGHBORS = 10
MIN_CELLS_PER_LIBRARY = 10
TARGET_SUM = 1e4
_CHUNK = 65_536


# ----------------------------------------------------------------------------------------------- latents
def check_counts(x: Any, where: str = "X") -> None:
    """Raise if counts contain NaN/inf or negative values (they would silently corrupt the latent)."""
    data = x.data if sparse.issparse(x) else np.asarray(x)
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{where} must be numeric counts, got dtype {data.dtype}.")
    if data.size and not np.isfinite(data).all():
        raise ValueError(
            f"{where} contains NaN or infinite values; fix or drop those cells/genes, or pass use_rep= with a "
            "finite representation."
        )
    if data.size and (data < 0).any():
        raise ValueError(
            f"{where} contains negative values: raw counts are expected (log-normalised or scaled data is not "
            "counts). Put raw counts in X, or pass use_rep= with a latent in obsm."
        )


def log_normalise(x: Any, target_sum: float = TARGET_SUM) -> sparse.csr_matrix:
    """``log1p(counts / total * target_sum)`` as float32 CSR (cells with zero counts stay zero)."""
    x = sparse.csr_matrix(x, dtype=np.float32, copy=True)
    totals = np.asarray(x.sum(1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    x.data *= np.repeat(scale, np.diff(x.indptr)).astype(np.float32)
    np.log1p(x.data, out=x.data)
    return x


def _column_mean_var(x: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(x.mean(0)).ravel()
    sq = x.copy()
    sq.data **= 2
    var = np.asarray(sq.mean(0)).ravel() - mean**2
    return mean, np.maximum(var, 0)


def fit_expression_pca(
    x: sparse.csr_matrix, n_comps: int, n_top_genes: int, max_cells: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Select the most variable genes and fit a centred PCA on a subsample of (log-normalised) cells."""
    from sklearn.decomposition import PCA

    _, var = _column_mean_var(x)
    genes = np.sort(np.argsort(-var, kind="stable")[: min(n_top_genes, x.shape[1])])
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


# ------------------------------------------------------------------------------------------------ mixture
def fit_gmm(
    features: np.ndarray,
    n_components: int,
    *,
    random_state: int = 0,
    max_fit_cells: int = 50_000,
    covariance_type: str = "full",
):
    """Gaussian mixture on (a random subsample of) the features, components ordered by decreasing weight."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(random_state)
    sub = features
    if len(features) > max_fit_cells:
        sub = features[np.sort(rng.choice(len(features), max_fit_cells, replace=False))]
    # the mixture's matrices are tiny: threaded BLAS only adds overhead (25x slower on a busy 2-core machine)
    with threadpool_limits(1, user_api="blas"):
        gmm = GaussianMixture(
            n_components,
            covariance_type=covariance_type,
            reg_covar=1e-4,
            max_iter=200,
            n_init=1,
            random_state=random_state,
        ).fit(sub)
    order = np.lexsort((gmm.means_[:, 0], -gmm.weights_))  # by weight, ties by the first mean coordinate
    return _reorder_gmm(gmm, order)


def _reorder_gmm(gmm, order: np.ndarray):
    gmm.weights_ = gmm.weights_[order]
    gmm.means_ = gmm.means_[order]
    if gmm.covariance_type in ("full", "diag"):
        gmm.covariances_ = gmm.covariances_[order]
        gmm.precisions_cholesky_ = gmm.precisions_cholesky_[order]
        gmm.precisions_ = gmm.precisions_[order]
    return gmm


def gmm_log_posterior(gmm, features: np.ndarray, progress: bool = False) -> np.ndarray:
    """``(n, K)`` log posterior probabilities, in chunks."""
    from threadpoolctl import threadpool_limits

    out = np.empty((len(features), gmm.n_components), dtype=np.float64)
    starts = range(0, len(features), _CHUNK)
    with threadpool_limits(1, user_api="blas"):
        for s in tqdm(starts, desc="niche posteriors", disable=not progress or len(starts) < 4, leave=False):
            w = gmm._estimate_weighted_log_prob(features[s : s + _CHUNK].astype(np.float64))
            out[s : s + _CHUNK] = w - logsumexp(w, axis=1, keepdims=True)
    return out


def _gmm_from_arrays(arrays: dict[str, np.ndarray], covariance_type: str):
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(len(arrays["gmm_weights"]), covariance_type=covariance_type)
    gmm.weights_ = arrays["gmm_weights"].astype(np.float64)
    gmm.means_ = arrays["gmm_means"].astype(np.float64)
    gmm.covariances_ = arrays["gmm_covariances"].astype(np.float64)
    gmm.precisions_cholesky_ = arrays["gmm_precisions_cholesky"].astype(np.float64)
    return gmm


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax as float32 rows summing to 1."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p = p.astype(np.float32)
    return p / p.sum(1, keepdims=True)


# ------------------------------------------------------------------------------------------------ teacher
@dataclass
class TeacherInputs:
    """Everything the head needs, computed once (a K sweep reuses it across K and seeds)."""

    xy: np.ndarray
    codes: np.ndarray
    nbrs: Neighbourhoods | None = None
    latent: np.ndarray | None = None
    features: np.ndarray | None = None
    labels: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_obs(self) -> int:
        """Number of cells/spots."""
        return len(self.xy)


class NicheTeacher:
    """Teacher niches from spatial omics (or any per-cell representation), sklearn-like.

    Parameters
    ----------
    n_niches
        Number of niches K (``None`` with ``method="labels"``: the number of label categories).
    method
        ``"aggregate"``, ``"composition"``, ``"transformer"`` or ``"labels"`` (see the module docstring).
    use_rep
        ``obsm`` key of a per-cell latent used as given (no normalisation); default: PCA of log counts.
    cell_type_key
        For ``"composition"``: an ``obs`` categorical of cell types, or an ``obsm`` key of per-spot cell-type
        fractions (DataFrame or array, rows summing to 1).
    labels_key
        For ``"labels"``: the ``obs`` column turned into teacher targets.
    library_key
        ``obs`` column with the section of each cell; neighbourhoods never cross sections.
    spatial_key
        ``obsm`` key of the micron coordinates.
    radius_um
        Neighbourhood radius in microns; default: estimated so the mean neighbour count is
        ``n_neighbors_target`` (the estimate is kept and reused on new data).
    n_neighbors_target
        Target mean number of neighbours used to estimate the radius.
    max_neighbors
        Cap of neighbours per cell (fixed-width lists keep memory linear); default ``max(32, 3 * target)``.
    n_rings
        Number of hops whose neighbourhood means are concatenated (``"aggregate"``/``"composition"``).
    weights
        Neighbour weights, ``"gaussian"`` in distance (default) or ``"uniform"``.
    n_comps
        PCA components of the expression latent.
    n_top_genes
        Most variable genes kept for the PCA.
    batch_correct
        Centre and scale the latent per library before aggregation (batch-aware teacher); default off.
    covariance_type
        Gaussian mixture covariance (``"full"`` or ``"diag"``).
    label_smoothing
        For ``"labels"``: mass spread uniformly over the other niches.
    max_fit_cells
        Cells used to fit the PCA and the mixture (a random subsample above this; prediction uses all).
    transformer_kwargs
        Overrides of :class:`~nichekd.models._niche_transformer.TransformerConfig` (``n_steps``, ...).
    random_state
        Seed; same seed, same niches.
    device
        Torch device for the transformer (``"auto"``: GPU when present).
    progress
        Show progress bars for the long steps.

    Examples
    --------
    >>> teacher = NicheTeacher(6, method="aggregate").fit(adata)
    >>> proba = teacher.predict_proba(new_adata)  # same genes, same radius
    >>> teacher.save("teacher/")
    >>> NicheTeacher.load("teacher/").predict(new_adata)
    """

    def __init__(
        self,
        n_niches: int | None,
        *,
        method: str = "aggregate",
        use_rep: str | None = None,
        cell_type_key: str | None = None,
        labels_key: str | None = None,
        library_key: str = LIBRARY_KEY,
        spatial_key: str = SPATIAL_KEY,
        radius_um: float | None = None,
        n_neighbors_target: float = DEFAULT_N_NEIGHBORS,
        max_neighbors: int | None = None,
        n_rings: int = 1,
        weights: str = "gaussian",
        n_comps: int = 30,
        n_top_genes: int = 2000,
        batch_correct: bool = False,
        covariance_type: str = "full",
        label_smoothing: float = 0.0,
        max_fit_cells: int = 50_000,
        transformer_kwargs: dict | None = None,
        random_state: int = 0,
        device: str = "auto",
        progress: bool = True,
    ):
        self.n_niches = n_niches
        self.method = method
        self.use_rep = use_rep
        self.cell_type_key = cell_type_key
        self.labels_key = labels_key
        self.library_key = library_key
        self.spatial_key = spatial_key
        self.radius_um = radius_um
        self.n_neighbors_target = n_neighbors_target
        self.max_neighbors = max_neighbors
        self.n_rings = n_rings
        self.weights = weights
        self.n_comps = n_comps
        self.n_top_genes = n_top_genes
        self.batch_correct = batch_correct
        self.covariance_type = covariance_type
        self.label_smoothing = label_smoothing
        self.max_fit_cells = max_fit_cells
        self.transformer_kwargs = dict(transformer_kwargs or {})
        self.random_state = random_state
        self.device = device
        self.progress = progress
        # fitted state
        self.radius_um_: float | None = None
        self.encoder_: dict[str, Any] = {}
        self.gmm_ = None
        self.transformer_ = None
        self.niche_names_: list[str] = []
        self.train_losses_: list[float] = []

    # ------------------------------------------------------------------ validation
    def _config(self) -> dict[str, Any]:
        keys = (
            "n_niches",
            "method",
            "use_rep",
            "cell_type_key",
            "labels_key",
            "library_key",
            "spatial_key",
            "radius_um",
            "n_neighbors_target",
            "max_neighbors",
            "n_rings",
            "weights",
            "n_comps",
            "n_top_genes",
            "batch_correct",
            "covariance_type",
            "label_smoothing",
            "max_fit_cells",
            "transformer_kwargs",
            "random_state",
            "device",
        )
        return {k: getattr(self, k) for k in keys}

    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
        if self.method == "labels":
            if self.labels_key is None:
                raise ValueError("method='labels' needs labels_key= (the obs column with the annotation).")
            if not 0 <= self.label_smoothing < 1:
                raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        elif self.n_niches is None or int(self.n_niches) != self.n_niches or self.n_niches < 2:
            raise ValueError(f"n_niches must be an integer >= 2, got {self.n_niches!r}.")
        if self.method == "composition" and self.cell_type_key is None:
            raise ValueError(
                "method='composition' needs cell_type_key= (obs cell types or obsm fractions); without cell "
                "types, run nichekd.pp.cell_types first (Leiden clusters of expression)."
            )
        if self.radius_um is not None and (not np.isfinite(self.radius_um) or self.radius_um <= 0):
            raise ValueError(f"radius_um must be a positive number of microns, got {self.radius_um!r}.")
        if self.n_rings < 1:
            raise ValueError(f"n_rings must be >= 1, got {self.n_rings}.")
        if self.weights not in ("gaussian", "uniform"):
            raise ValueError(f"weights must be 'gaussian' or 'uniform', got {self.weights!r}.")
        if self.covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {self.covariance_type!r}.")

    def _check_libraries(self, adata: ad.AnnData, codes: np.ndarray, names: list[str]) -> None:
        sizes = np.bincount(codes, minlength=len(names))
        small = [f"{names[i]} ({sizes[i]})" for i in range(len(names)) if sizes[i] < MIN_CELLS_PER_LIBRARY]
        if small:
            raise ValueError(
                f"Libraries with fewer than {MIN_CELLS_PER_LIBRARY} cells cannot form neighbourhoods: "
                f"{', '.join(small)}. Drop them (adata[adata.obs[{self.library_key!r}] != ...]) or merge them."
            )
        k = self.n_niches
        if self.method != "labels" and k is not None:
            if k > adata.n_obs:
                raise ValueError(
                    f"n_niches={k} is larger than the number of cells ({adata.n_obs}); lower it."
                )
            if k > sizes.min():
                raise ValueError(
                    f"n_niches={k} is larger than library {names[int(sizes.argmin())]!r} allows "
                    f"({sizes.min()} cells); lower n_niches or drop that library."
                )

    def _library_codes(self, adata: ad.AnnData) -> tuple[np.ndarray, list[str]]:
        if self.library_key in adata.obs and adata.obs[self.library_key].isna().any():
            raise ValueError(f"obs[{self.library_key!r}] has missing values; every cell needs a library.")
        libs = library_labels(adata, self.library_key)
        return np.asarray(libs.codes, dtype=np.int64), [str(c) for c in libs.categories]

    # ------------------------------------------------------------------ per-cell inputs
    def _cell_type_matrix(self, adata: ad.AnnData, fit: bool) -> np.ndarray:
        key = self.cell_type_key
        if key in adata.obsm:
            frac = adata.obsm[key]
            names = [str(c) for c in frac.columns] if isinstance(frac, pd.DataFrame) else None
            arr = np.asarray(frac, dtype=np.float64)
            if fit:
                self.encoder_["cell_types"] = names or [str(i) for i in range(arr.shape[1])]
            elif names is not None:
                missing = [c for c in self.encoder_["cell_types"] if c not in names]
                if missing:
                    raise KeyError(f"obsm[{key!r}] lacks the fitted cell types {missing[:5]}.")
                arr = np.asarray(frac[self.encoder_["cell_types"]], dtype=np.float64)
            elif arr.shape[1] != len(self.encoder_["cell_types"]):
                raise ValueError(
                    f"obsm[{key!r}] has {arr.shape[1]} columns, the teacher was fitted on "
                    f"{len(self.encoder_['cell_types'])}."
                )
            if not np.isfinite(arr).all() or (arr < 0).any():
                raise ValueError(f"obsm[{key!r}] must hold finite, non-negative cell-type fractions.")
            tot = arr.sum(1, keepdims=True)
            if (tot <= 0).any():
                raise ValueError(f"obsm[{key!r}] has rows summing to 0; drop those spots.")
            return (arr / tot).astype(np.float32)
        if key not in adata.obs:
            raise KeyError(
                f"cell_type_key={key!r} is neither an obs column nor an obsm key; available obs columns: "
                f"{list(adata.obs.columns)[:20]}. Run nichekd.pp.cell_types to create one."
            )
        col = adata.obs[key]
        if col.isna().any():
            raise ValueError(f"obs[{key!r}] has missing cell types; fill or drop those cells.")
        values = col.astype(str).to_numpy()
        if fit:
            cats = list(col.cat.categories.astype(str)) if hasattr(col, "cat") else sorted(set(values))
            self.encoder_["cell_types"] = [c for c in cats if c in set(values)]
        cats = self.encoder_["cell_types"]
        lookup = {c: i for i, c in enumerate(cats)}
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise ValueError(f"obs[{key!r}] has cell types the teacher was not fitted on: {unknown[:5]}.")
        idx = np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))
        onehot = np.zeros((len(values), len(cats)), dtype=np.float32)
        onehot[np.arange(len(values)), idx] = 1.0
        return onehot

    def _label_codes(self, adata: ad.AnnData, fit: bool) -> np.ndarray:
        key = self.labels_key
        if key not in adata.obs:
            raise KeyError(
                f"labels_key={key!r} is not an obs column; available: {list(adata.obs.columns)[:20]}."
            )
        col = adata.obs[key]
        if col.isna().any():
            raise ValueError(
                f"obs[{key!r}] has {int(col.isna().sum())} unlabelled cells; drop or label them."
            )
        values = col.astype(str).to_numpy()
        if fit:
            cats = list(col.cat.categories.astype(str)) if hasattr(col, "cat") else sorted(set(values))
            cats = [c for c in cats if c in set(values)]
            if self.n_niches is not None and self.n_niches != len(cats):
                raise ValueError(
                    f"n_niches={self.n_niches} but obs[{key!r}] has {len(cats)} labels; pass n_niches=None."
                )
            self.encoder_["labels"] = cats
        lookup = {c: i for i, c in enumerate(self.encoder_["labels"])}
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise ValueError(f"obs[{key!r}] has labels the teacher was not fitted on: {unknown[:5]}.")
        return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))

    def _latent(self, adata: ad.AnnData, fit: bool, rng: np.random.Generator) -> np.ndarray:
        if self.use_rep is not None:
            if self.use_rep not in adata.obsm:
                raise KeyError(f"use_rep={self.use_rep!r} is not in obsm; available: {list(adata.obsm)}.")
            latent = np.asarray(adata.obsm[self.use_rep], dtype=np.float32)
            if latent.ndim != 2 or not np.isfinite(latent).all():
                raise ValueError(f"obsm[{self.use_rep!r}] must be a finite (n, d) array.")
            if not fit and latent.shape[1] != self.encoder_["dim"]:
                raise ValueError(
                    f"obsm[{self.use_rep!r}] has {latent.shape[1]} dims, fitted on {self.encoder_['dim']}."
                )
            self.encoder_["dim"] = latent.shape[1]
            return latent
        x = adata.X
        if x is None:
            raise ValueError("adata.X is empty: put raw counts in X or pass use_rep=.")
        genes = None
        if not fit:
            names = self.encoder_["gene_names"]
            genes = adata.var_names.get_indexer(names)
            if (genes < 0).any():
                raise KeyError(
                    f"{int((genes < 0).sum())} genes used by the teacher are missing from the new data (e.g. "
                    f"{[g for g, p in zip(names, genes, strict=True) if p < 0][:5]}); predict on data with the "
                    "same genes."
                )
        check_counts(x)
        xn = log_normalise(x)  # library size over all genes of this table, as at fit time
        if fit:
            pca = fit_expression_pca(xn, self.n_comps, self.n_top_genes, self.max_fit_cells, rng)
            # new data is subset to the PCA genes by name
            self.encoder_["gene_names"] = [str(g) for g in adata.var_names[pca["genes"]]]
            self.encoder_["pca_mean"] = pca["mean"]
            self.encoder_["pca_components"] = pca["components"]
            self.encoder_["dim"] = pca["components"].shape[0]
            genes = pca["genes"]
        pca = {
            "genes": genes,
            "mean": self.encoder_["pca_mean"],
            "components": self.encoder_["pca_components"],
        }
        return project_expression(xn, pca)

    def prepare(self, adata: ad.AnnData, *, fit: bool = False) -> TeacherInputs:
        """Validate ``adata`` and compute the per-cell inputs of the head (latent, neighbourhoods, features).

        With ``fit=True`` the encoder (PCA, radius, categories, scaling) is learnt from ``adata``; otherwise the
        fitted one is applied. Nothing is written to ``adata``.
        """
        self._check_params()
        if not isinstance(adata, ad.AnnData):
            raise TypeError(f"Expected an AnnData table, got {type(adata).__name__}.")
        if adata.n_obs == 0:
            raise ValueError("The table has no cells.")
        xy = spatial_coords(adata, self.spatial_key)
        codes, names = self._library_codes(adata)
        self._check_libraries(adata, codes, names)
        rng = np.random.default_rng(self.random_state)
        if fit:
            self.encoder_ = {}
        inputs = TeacherInputs(xy=xy, codes=codes, extra={"libraries": names})
        if self.method == "labels":
            inputs.labels = self._label_codes(adata, fit)
            return inputs
        base = (
            self._cell_type_matrix(adata, fit)
            if self.method == "composition"
            else self._latent(adata, fit, rng)
        )
        if fit:
            self.radius_um_ = (
                float(self.radius_um)
                if self.radius_um is not None
                else estimate_radius(
                    xy, self.n_neighbors_target, groups=codes, random_state=self.random_state
                )
            )
        m = self.max_neighbors or int(max(32, np.ceil(3 * self.n_neighbors_target)))
        nbrs = radius_neighbours(xy, self.radius_um_, groups=codes, max_neighbors=m)
        mean_count = float(nbrs.counts().mean())
        if mean_count < 0.5:
            raise ValueError(
                f"With radius {self.radius_um_:.3g} um cells have {mean_count:.2f} neighbours on average: the "
                "radius is below the cell/spot spacing. Coordinates must be microns (obsm['spatial']) and "
                "radius_um= in microns; or leave radius_um=None to estimate it."
            )
        inputs.nbrs = nbrs
        inputs.extra["mean_neighbours"] = mean_count
        if self.method == "composition":
            inputs.features = np.sqrt(neighbourhood_features(base, nbrs, self.n_rings, self.weights))
            return inputs
        if fit:
            self.encoder_["standardise"] = _standardise_state(base)
        latent = standardise(base, self.encoder_["standardise"], codes if self.batch_correct else None)
        inputs.latent = latent
        if self.method == "aggregate":
            inputs.features = neighbourhood_features(latent, nbrs, self.n_rings, self.weights)
        return inputs

    # ------------------------------------------------------------------ head
    def _transformer_config(self, in_dim: int, n_niches: int):
        from ._niche_transformer import TransformerConfig

        return TransformerConfig(in_dim=in_dim, n_niches=n_niches, **self.transformer_kwargs)

    def fit_head(
        self, inputs: TeacherInputs, n_niches: int | None = None, random_state: int | None = None
    ) -> NicheTeacher:
        """Fit the K-niche head on prepared inputs (reused across K and seeds by :func:`niche_k_sweep`)."""
        k = int(n_niches if n_niches is not None else (self.n_niches or 0))
        seed = self.random_state if random_state is None else int(random_state)
        self.gmm_ = self.transformer_ = None
        if self.method == "labels":
            k = len(self.encoder_["labels"])
            self.niche_names_ = [f"N{i}" for i in range(k)]
            self.n_niches = k
            return self
        if self.method in ("aggregate", "composition"):
            self.gmm_ = fit_gmm(
                inputs.features,
                k,
                random_state=seed,
                max_fit_cells=self.max_fit_cells,
                covariance_type=self.covariance_type,
            )
        else:
            import torch

            from .._utils import resolve_device
            from ._niche_transformer import train_niche_transformer, transformer_logits

            device = resolve_device(self.device)
            cfg = self._transformer_config(inputs.latent.shape[1], k)
            model, self.train_losses_ = train_niche_transformer(
                inputs.latent,
                inputs.xy,
                inputs.nbrs,
                cfg,
                random_state=seed,
                device=device,
                progress=self.progress,
            )
            # order clusters by decreasing mass on the fitting data (deterministic names)
            logits = transformer_logits(model, inputs.latent, inputs.xy, inputs.nbrs, device=device)
            mass = softmax(logits).sum(0)
            order = np.lexsort((np.arange(k), -mass))
            with torch.no_grad():
                model.prototypes.weight.copy_(model.prototypes.weight[torch.as_tensor(order.copy())].clone())
            self.transformer_ = model.cpu()
        self.n_niches = k
        self.niche_names_ = [f"N{i}" for i in range(k)]
        return self

    def fit(self, adata: ad.AnnData) -> NicheTeacher:
        """Learn the encoder and the K niches from ``adata`` (all libraries jointly: one label space).

        Parameters
        ----------
        adata
            Table with raw counts in ``X`` (or ``obsm[use_rep]``), micron coordinates in ``obsm['spatial']``
            and the library in ``obs[library_key]``.
        """
        inputs = self.prepare(adata, fit=True)
        return self.fit_head(inputs)

    def _check_fitted(self) -> None:
        if not self.niche_names_:
            raise RuntimeError("The teacher is not fitted; call fit(adata) first.")

    def logits_from_inputs(self, inputs: TeacherInputs) -> np.ndarray | None:
        """``(n, K)`` logits (log posteriors for mixtures); ``None`` for ``"labels"``."""
        self._check_fitted()
        if self.method == "labels":
            return None
        if self.gmm_ is not None:
            return gmm_log_posterior(self.gmm_, inputs.features, progress=self.progress).astype(np.float32)
        from .._utils import resolve_device
        from ._niche_transformer import transformer_logits

        device = resolve_device(self.device)
        logits = transformer_logits(
            self.transformer_.to(device), inputs.latent, inputs.xy, inputs.nbrs, device=device
        )
        self.transformer_.cpu()
        return logits

    def proba_from_inputs(self, inputs: TeacherInputs) -> np.ndarray:
        """``(n, K)`` float32 niche probabilities (rows sum to 1)."""
        if self.method == "labels":
            self._check_fitted()
            k = len(self.niche_names_)
            eps = self.label_smoothing
            p = np.full((inputs.n_obs, k), eps / max(k - 1, 1) if k > 1 else 0.0, dtype=np.float32)
            p[np.arange(inputs.n_obs), inputs.labels] = 1.0 - eps if k > 1 else 1.0
            return p
        return softmax(self.logits_from_inputs(inputs))

    def predict_logits(self, adata: ad.AnnData) -> np.ndarray | None:
        """Niche logits of new data (same genes/representation; the fitted radius is reused)."""
        return self.logits_from_inputs(self.prepare(adata))

    def predict_proba(self, adata: ad.AnnData) -> np.ndarray:
        """``(n, K)`` float32 niche probabilities of new data, columns in :attr:`niche_names_` order.

        Parameters
        ----------
        adata
            Table with the same genes (or ``obsm[use_rep]``), coordinates in microns and libraries.
        """
        return self.proba_from_inputs(self.prepare(adata))

    def predict(self, adata: ad.AnnData) -> pd.Categorical:
        """Most probable niche per cell, as a categorical with categories :attr:`niche_names_`.

        Parameters
        ----------
        adata
            As for :meth:`predict_proba`.
        """
        return self.labels_from_proba(self.predict_proba(adata))

    def labels_from_proba(self, proba: np.ndarray) -> pd.Categorical:
        """Arg-max niche names as a categorical (categories in column order)."""
        return pd.Categorical.from_codes(proba.argmax(1), categories=self.niche_names_)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the fitted teacher to folder ``path`` (``teacher.json`` + safetensors, no pickle).

        Parameters
        ----------
        path
            Folder to create (or overwrite the teacher files in).
        """
        from safetensors.numpy import save_file

        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {
            "config": self._config(),
            "radius_um_": self.radius_um_,
            "niche_names_": self.niche_names_,
            "n_niches": self.n_niches,
            "format": "nichekd.NicheTeacher/1",
        }
        enc = {}
        for k, v in self.encoder_.items():
            if k == "standardise":
                arrays.update(
                    {f"std_{kk}": np.atleast_1d(np.asarray(vv, dtype=np.float32)) for kk, vv in v.items()}
                )
            elif isinstance(v, np.ndarray):
                arrays[f"enc_{k}"] = np.ascontiguousarray(v)
            else:
                enc[k] = v
        meta["encoder"] = enc
        if self.gmm_ is not None:
            arrays.update(
                {
                    "gmm_weights": self.gmm_.weights_,
                    "gmm_means": self.gmm_.means_,
                    "gmm_covariances": self.gmm_.covariances_,
                    "gmm_precisions_cholesky": self.gmm_.precisions_cholesky_,
                }
            )
        if self.transformer_ is not None:
            from safetensors.torch import save_file as save_torch

            meta["transformer_config"] = self.transformer_.config.to_dict()
            save_torch(
                {k: v.contiguous() for k, v in self.transformer_.state_dict().items()},
                str(path / ".transformer.safetensors.tmp"),
            )
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        if arrays:
            save_file(arrays, str(path / ".teacher.safetensors.tmp"))
        # checksums of the defining fields and of every stored array, verified by load()
        torch_state = (
            {k: v.detach().cpu().numpy() for k, v in self.transformer_.state_dict().items()}
            if self.transformer_ is not None
            else {}
        )
        meta["checksum"] = {
            "definition": _teacher_definition_digest(meta),
            "weights": _arrays_digest({**arrays, **{f"transformer.{k}": v for k, v in torch_state.items()}}),
        }
        (path / ".teacher.json.tmp").write_text(json.dumps(_teacher_json_safe(meta), indent=1))
        # every file is complete before any is renamed into place: an interrupted save leaves the old teacher
        for name in ("transformer.safetensors", "teacher.safetensors", "teacher.json"):
            if (path / f".{name}.tmp").exists():
                (path / f".{name}.tmp").replace(path / name)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NicheTeacher:
        """Read a teacher written by :meth:`save`.

        Parameters
        ----------
        path
            Folder holding ``teacher.json``.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(path)
        meta_file = path / "teacher.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"No teacher.json in {path}; was the teacher saved with NicheTeacher.save?"
            )
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{meta_file} is not valid JSON ({err}); the teacher's config is damaged."
            ) from err

        def read(name: str, loader) -> dict:
            file = path / name
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing; the teacher was saved with it ({meta_file}).")
            try:
                return loader(str(file))
            except (SafetensorError, OSError, ValueError) as err:
                raise ValueError(
                    f"{file} cannot be read as safetensors ({err}); it is truncated or corrupt."
                ) from err

        arrays = read("teacher.safetensors", load_file) if (path / "teacher.safetensors").exists() else {}
        torch_state = None
        if isinstance(meta, dict) and "transformer_config" in meta:
            from safetensors.torch import load_file as load_torch

            torch_state = read("transformer.safetensors", load_torch)
        checksum = meta.get("checksum") if isinstance(meta, dict) else None
        if checksum is not None:  # teachers saved before checksums existed have none
            if checksum.get("definition") != _teacher_definition_digest(meta):
                raise ValueError(
                    f"{meta_file} does not match its checksum: a defining field (niche names, radius, method, "
                    "settings) was changed after saving. Restore the saved file."
                )
            state = {f"transformer.{k}": v.numpy() for k, v in (torch_state or {}).items()}
            if checksum.get("weights") != _arrays_digest({**arrays, **state}):
                raise ValueError(
                    f"The arrays in {path} (teacher.safetensors / transformer.safetensors) do not match the "
                    f"checksum in {meta_file}: they are corrupted or belong to another teacher."
                )
        try:
            cfg = dict(meta["config"])
            cfg.pop("n_niches")
            self = cls(meta["n_niches"], **cfg)
            self.radius_um_ = meta["radius_um_"]
            self.niche_names_ = list(meta["niche_names_"])
            self.encoder_ = dict(meta["encoder"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{meta_file} is not a valid teacher config ({type(err).__name__}: {err})."
            ) from err
        std = {k[4:]: v for k, v in arrays.items() if k.startswith("std_")}
        if std:
            for k, v in std.items():
                if not np.isfinite(v).all() or (k in ("sd", "scale") and (v <= 0).any()):
                    raise ValueError(
                        f"{path / 'teacher.safetensors'}: standardisation {k!r} is not finite or not positive; "
                        "the teacher is damaged."
                    )
            std["scale"] = np.float32(std["scale"][0])
            self.encoder_["standardise"] = std
        self.encoder_.update({k[4:]: v for k, v in arrays.items() if k.startswith("enc_")})
        if "gmm_weights" in arrays:
            self.gmm_ = _gmm_from_arrays(arrays, self.covariance_type)
        if torch_state is not None:
            from ._niche_transformer import NicheTransformer, TransformerConfig

            model = NicheTransformer(TransformerConfig(**meta["transformer_config"]))
            try:
                model.load_state_dict(torch_state)
            except RuntimeError as err:
                raise ValueError(
                    f"{path / 'transformer.safetensors'} does not match {meta_file}: {str(err).splitlines()[0]}"
                ) from err
            self.transformer_ = model.eval()
        return self

    def __repr__(self) -> str:
        state = (
            f"fitted, radius_um={self.radius_um_:.4g}"
            if self.niche_names_ and self.radius_um_
            else ("fitted" if self.niche_names_ else "not fitted")
        )
        return f"NicheTeacher(n_niches={self.n_niches}, method={self.method!r}, {state})"


def _teacher_json_safe(value: Any) -> Any:
    """Plain JSON types (numpy scalars and arrays become numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _teacher_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_teacher_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _teacher_definition_digest(meta: dict[str, Any]) -> str:
    """sha256 of everything in ``teacher.json`` but the checksum itself, as canonical JSON."""
    fields = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(_teacher_json_safe(fields), sort_keys=True).encode()).hexdigest()


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
