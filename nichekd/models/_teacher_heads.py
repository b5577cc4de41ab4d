"""The teacher's niche heads: Gaussian mixture, cell-type composition, transformer and labels.

Part of :mod:`nichekd.models.teacher`. Mixture heads (``"aggregate"``, ``"composition"``) fit a Gaussian
mixture on neighbourhood features; ``"composition"`` builds those features from cell types; the
``"transformer"`` head is the self-supervised :mod:`niche transformer <nichekd.models._niche_transformer>`;
``"labels"`` turns an annotation into one-hot targets.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
from scipy.special import logsumexp
from tqdm.auto import tqdm

from .._core.cell_types import cell_type_weights
from .._core.runtime import one_blas_thread
from ._teacher_latent import _CHUNK


# ------------------------------------------------------------------------------------------------ mixture
def fit_gmm(
    features: np.ndarray,
    n_components: int,
    *,
    random_state: int = 0,
    max_fit_cells: int = 50_000,
    covariance_type: str = "full",
    reg_covar: float = 1e-4,
):
    """Gaussian mixture on (a random subsample of) the features, components ordered by decreasing weight."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(random_state)
    sub = features
    if len(features) > max_fit_cells:
        sub = features[np.sort(rng.choice(len(features), max_fit_cells, replace=False))]
    # the mixture's matrices are tiny: threaded BLAS only adds overhead (25x slower on a busy 2-core machine)
    with one_blas_thread():
        gmm = GaussianMixture(
            n_components,
            covariance_type=covariance_type,
            reg_covar=reg_covar,
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

    out = np.empty((len(features), gmm.n_components), dtype=np.float64)
    starts = range(0, len(features), _CHUNK)
    with one_blas_thread():
        for s in tqdm(starts, desc="niche posteriors", disable=not progress or len(starts) < 4, leave=False):
            w = gmm._estimate_weighted_log_prob(features[s : s + _CHUNK].astype(np.float64))
            out[s : s + _CHUNK] = w - logsumexp(w, axis=1, keepdims=True)
    return out


def gmm_from_arrays(arrays: dict[str, np.ndarray], covariance_type: str):
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


# -------------------------------------------------------------------------------------------- composition
def cell_type_matrix(adata: ad.AnnData, key: str, encoder: dict[str, Any], fit: bool) -> np.ndarray:
    """Per-cell cell-type one-hot (obs labels) or fractions (obsm, rows summed to 1); the types are learnt into
    ``encoder`` (see :func:`nichekd._core.cell_types.cell_type_weights`)."""
    arr, types = cell_type_weights(adata, key, None if fit else encoder["cell_types"])
    if fit:
        encoder["cell_types"] = types
    if key in adata.obsm:
        tot = arr.sum(1, keepdims=True)
        if (tot <= 0).any():
            raise ValueError(f"obsm[{key!r}] has rows summing to 0; drop those spots.")
        arr = arr / tot
    return arr.astype(np.float32)


# ------------------------------------------------------------------------------------------------- labels
def label_codes(
    adata: ad.AnnData, key: str, encoder: dict[str, Any], fit: bool, n_niches: int | None
) -> np.ndarray:
    """Integer code of each cell's label in ``obs[key]``; the label set is learnt into ``encoder``."""
    if key not in adata.obs:
        raise KeyError(f"labels_key={key!r} is not an obs column; available: {list(adata.obs.columns)[:20]}.")
    col = adata.obs[key]
    if col.isna().any():
        raise ValueError(f"obs[{key!r}] has {int(col.isna().sum())} unlabelled cells; drop or label them.")
    values = col.astype(str).to_numpy()
    if fit:
        cats = list(col.cat.categories.astype(str)) if hasattr(col, "cat") else sorted(set(values))
        cats = [c for c in cats if c in set(values)]
        if n_niches is not None and n_niches != len(cats):
            raise ValueError(
                f"n_niches={n_niches} but obs[{key!r}] has {len(cats)} labels; pass n_niches=None."
            )
        encoder["labels"] = cats
    lookup = {c: i for i, c in enumerate(encoder["labels"])}
    unknown = sorted(set(values) - set(lookup))
    if unknown:
        raise ValueError(f"obs[{key!r}] has labels the teacher was not fitted on: {unknown[:5]}.")
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def labels_proba(codes: np.ndarray, k: int, label_smoothing: float) -> np.ndarray:
    """One-hot targets with ``label_smoothing`` spread uniformly over the other niches."""
    n = len(codes)
    eps = label_smoothing
    p = np.full((n, k), eps / max(k - 1, 1) if k > 1 else 0.0, dtype=np.float32)
    p[np.arange(n), codes] = 1.0 - eps if k > 1 else 1.0
    return p


# -------------------------------------------------------------------------------------------- transformer
def fit_transformer_head(
    inputs: Any,
    k: int,
    transformer_kwargs: dict,
    *,
    random_state: int,
    device: str,
    progress: bool,
) -> tuple[Any, list[float]]:
    """Train the niche transformer; prototypes ordered by decreasing mass on the fitting data."""
    import torch

    from .._core.runtime import resolve_device
    from ._niche_transformer import TransformerConfig, train_niche_transformer, transformer_logits

    device = resolve_device(device)
    cfg = TransformerConfig(in_dim=inputs.latent.shape[1], n_niches=k, **transformer_kwargs)
    model, losses = train_niche_transformer(
        inputs.latent,
        inputs.xy,
        inputs.nbrs,
        cfg,
        random_state=random_state,
        device=device,
        progress=progress,
    )
    # order clusters by decreasing mass on the fitting data (deterministic names)
    logits = transformer_logits(model, inputs.latent, inputs.xy, inputs.nbrs, device=device)
    mass = softmax(logits).sum(0)
    order = np.lexsort((np.arange(k), -mass))
    with torch.no_grad():
        model.prototypes.weight.copy_(model.prototypes.weight[torch.as_tensor(order.copy())].clone())
    return model.cpu(), losses


def transformer_head_logits(model: Any, inputs: Any, device: str) -> np.ndarray:
    """``(n, K)`` prototype logits of the fitted transformer."""
    from .._core.runtime import resolve_device
    from ._niche_transformer import transformer_logits

    device = resolve_device(device)
    logits = transformer_logits(model.to(device), inputs.latent, inputs.xy, inputs.nbrs, device=device)
    model.cpu()
    return logits


# ------------------------------------------------------------------------------------------- calibration
CALIBRATIONS = ("neighbours",)
_MAX_CALIBRATION_CELLS = 20_000


def neighbour_temperature(
    logits: np.ndarray,
    nbrs: Any,
    *,
    max_cells: int = _MAX_CALIBRATION_CELLS,
    random_state: int = 0,
    bounds: tuple[float, float] = (0.1, 100.0),
) -> float:
    """Temperature ``T`` such that ``softmax(logits / T)`` of a cell best predicts its neighbours' niches.

    Why: a mixture's posterior on neighbourhood means in tens of dimensions is near one-hot even where the
    niche is uncertain (on 6k synthetic cells, K=6: mean max p 0.99 at 77% accuracy against the true niches).
    The niche of a cell's spatial neighbours is a held-out check the teacher never fitted: a cell's
    argmax is not its neighbours', so ``T`` is fitted (by maximum likelihood, one scalar, as in temperature
    scaling) so that the cell's probabilities match how often its neighbours share each niche. The argmax,
    hence every hard label, is unchanged.

    Parameters
    ----------
    logits
        ``(n, K)`` log posteriors / logits of the fitted head on its fitting cells.
    nbrs
        Their :class:`~nichekd._core.neighbors.Neighbourhoods` (the cell itself is excluded from its targets).
    max_cells
        Cells used (a seeded subsample above this).
    random_state
        Seed of the subsample.
    bounds
        Range searched for ``T``.

    Returns
    -------
    The fitted temperature (1 when no cell has a neighbour).

    Examples
    --------
    >>> T = neighbour_temperature(logits, inputs.nbrs)  # doctest: +SKIP
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    n = len(logits)
    cells = np.arange(n)
    if n > max_cells:
        cells = np.sort(np.random.default_rng(random_state).choice(n, max_cells, replace=False))
    labels = np.asarray(logits).argmax(1)
    index = nbrs.index[cells]
    valid = (index >= 0) & (index != cells[:, None])
    rows = np.repeat(np.arange(len(cells)), valid.sum(1))
    targets = labels[index[valid]]
    if not len(rows):
        return 1.0
    z = np.asarray(logits, dtype=np.float64)[cells]
    z = z - z.max(1, keepdims=True)

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, targets].mean())

    res = minimize_scalar(nll, bounds=tuple(np.log(bounds)), method="bounded", options={"xatol": 1e-3})
    return float(np.exp(res.x))
