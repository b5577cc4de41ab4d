"""The one prediction writer: niche labels, probabilities and entropy of ``distill`` and ``predict_niches``.

Both write through :func:`write_niche_predictions` after claiming :func:`prediction_targets` under the write
policy (:func:`nichekd._core.records.claim`); rows a run does not predict keep an earlier run's predictions.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def prediction_entropy(proba: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row: the student's uncertainty."""
    p = np.clip(proba, 1e-12, 1.0)
    return -(p * np.log(p)).sum(1)


def _held_rows(adata: ad.AnnData, key_added: str) -> np.ndarray:
    """Rows where ``obs[key_added]`` already holds a prediction (a niche or finite probabilities)."""
    held = np.zeros(adata.n_obs, bool)
    if key_added in adata.obs:
        held |= adata.obs[key_added].notna().to_numpy()
    proba_key = f"{key_added}_proba"
    if proba_key in adata.obsm:
        p = np.asarray(adata.obsm[proba_key], dtype=float)
        if p.ndim == 2 and len(p) == adata.n_obs:
            held |= np.isfinite(p).any(1)
    return held


def check_niche_write(
    adata: ad.AnnData, key_added: str, names: list[str], rows: np.ndarray | None = None, *, overwrite: bool
) -> None:
    """Raise if writing predictions for ``rows`` (default all) under ``key_added`` would erase results.

    Rows that already hold a prediction are refused unless ``overwrite``; predictions of other rows are kept,
    so they must come from a model with the same niche names.
    """
    n = adata.n_obs
    mask = np.zeros(n, bool)
    mask[np.arange(n) if rows is None else np.asarray(rows)] = True
    held = _held_rows(adata, key_added)
    clash = held & mask
    if clash.any() and not overwrite:
        raise ValueError(
            f"obs[{key_added!r}] already holds predictions for {int(clash.sum())} of the {int(mask.sum())} "
            f"observations this run would write (from {_writer(adata, key_added)}). Pass overwrite=True to "
            "replace them (other rows are kept), or key_added= another key to keep both."
        )
    others = held & ~mask
    if others.any():
        old = _existing_names(adata, key_added)
        if old != [str(n_) for n_ in names]:
            what = (
                f"other niche names ({old})" if old is not None else "values that are not niche predictions"
            )
            raise ValueError(
                f"obs[{key_added!r}] holds {what} for {int(others.sum())} other observations, and this model "
                f"predicts {list(names)}; one column cannot mix them. Pass key_added= another key."
            )


def _writer(adata: ad.AnnData, key_added: str) -> str:
    entry = adata.uns.get(key_added)
    if isinstance(entry, dict) and isinstance(entry.get("params"), dict):
        p = entry["params"]
        what = "distill" if "teacher_key" in p else "predict_niches" if "model" in p else "another function"
        return f"{what}, {p.get('date', 'date unknown')}"
    return "another run"


def _existing_names(adata: ad.AnnData, key_added: str) -> list[str] | None:
    col = adata.obs.get(key_added)
    if col is None:
        return None
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [str(c) for c in col.cat.categories]
    return None


def prediction_targets(key_added: str) -> list[tuple[str, str]]:
    """The keys a prediction writes (``distill``, ``predict_niches``), for :func:`nichekd._core.records.claim`."""
    return [
        ("obs", key_added),
        ("obs", f"{key_added}_entropy"),
        ("obsm", f"{key_added}_proba"),
        ("uns", key_added),
    ]


def write_niche_predictions(
    adata: ad.AnnData,
    key_added: str,
    proba: np.ndarray,
    names: list[str],
    rows: np.ndarray | None = None,
    *,
    overwrite: bool = True,
) -> None:
    """Write ``obs[key_added]`` (argmax niche), ``obsm[f"{key_added}_proba"]`` (float32) and
    ``obs[f"{key_added}_entropy"]`` for ``rows`` (default all).

    Observations outside ``rows`` keep what they hold (another run's predictions), else get a missing niche
    and NaN. Raises (before writing) as :func:`check_niche_write` does.
    """
    check_niche_write(adata, key_added, names, rows, overwrite=overwrite)
    n = adata.n_obs
    rows = np.arange(n) if rows is None else np.asarray(rows)
    full = np.full((n, len(names)), np.nan, dtype=np.float32)
    labels = np.full(n, None, dtype=object)
    entropy = np.full(n, np.nan, dtype=np.float32)
    held = _held_rows(adata, key_added)
    held[rows] = False
    if held.any():  # keep the other rows' predictions (same niche names, checked above)
        proba_key, ent_key = f"{key_added}_proba", f"{key_added}_entropy"
        if proba_key in adata.obsm and np.shape(adata.obsm[proba_key]) == full.shape:
            full[held] = np.asarray(adata.obsm[proba_key], dtype=np.float32)[held]
        labels[held] = adata.obs[key_added].astype(object).to_numpy()[held]
        if ent_key in adata.obs:
            entropy[held] = adata.obs[ent_key].to_numpy(dtype=np.float32)[held]
    full[rows] = proba
    labels[rows] = np.asarray(names, dtype=object)[np.asarray(proba).argmax(1)]
    entropy[rows] = prediction_entropy(proba)
    adata.obs[key_added] = pd.Categorical(labels, categories=list(names))
    adata.obsm[f"{key_added}_proba"] = full
    adata.obs[f"{key_added}_entropy"] = entropy
