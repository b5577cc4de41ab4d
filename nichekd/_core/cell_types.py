"""Cell-type weights of each observation: one rule for an obs column of labels and for obsm fractions.

The teacher's composition view and the composition checks both read cell types here, so a column means the
same cell types (same order, same handling of missing values) wherever it is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd


def cell_type_weights(
    adata: ad.AnnData, key: str, types: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """``(n, T)`` cell-type weights and the ``T`` type names.

    ``obs[key]`` (labels) gives a one-hot, its types in the categorical's order (unused categories dropped) or
    sorted; ``obsm[key]`` (per-spot fractions, e.g. from deconvolution) is taken as given, its types from the
    DataFrame's columns or numbered. With ``types`` (the types a model was fitted on) the columns follow that
    list, and labels or columns outside it raise.

    Examples
    --------
    >>> import anndata as ad, pandas as pd
    >>> a = ad.AnnData(obs=pd.DataFrame({"ct": ["B", "T", "B"]}, index=list("xyz")))
    >>> w, names = cell_type_weights(a, "ct")
    >>> names, w.sum(0).tolist()
    (['B', 'T'], [2.0, 1.0])
    """
    if key in adata.obsm:
        return _fractions(adata, key, types)
    if key not in adata.obs:
        raise KeyError(
            f"cell_type_key={key!r} is neither an obs column nor an obsm key; available obs columns: "
            f"{list(adata.obs.columns)[:20]}. Run nichekd.pp.cell_types to create one."
        )
    col = adata.obs[key]
    if col.isna().any():
        raise ValueError(
            f"obs[{key!r}] has {int(col.isna().sum())} missing cell types; fill them or drop those cells."
        )
    values = col.astype(str).to_numpy()
    if types is None:
        if isinstance(col.dtype, pd.CategoricalDtype):  # keep the user's order
            present = set(values)
            types = [str(c) for c in col.cat.categories if str(c) in present]
        else:
            types = sorted(set(values))
    types = [str(t) for t in types]
    lookup = {t: i for i, t in enumerate(types)}
    unknown = sorted(set(values) - set(lookup))
    if unknown:
        raise ValueError(
            f"obs[{key!r}] has cell types outside the fitted ones {types[:10]}: {unknown[:5]}. Use the cell-type "
            "labels the model was fitted with, or refit it."
        )
    codes = np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))
    onehot = np.zeros((len(values), len(types)))
    onehot[np.arange(len(values)), codes] = 1.0
    return onehot, types


def _fractions(adata: ad.AnnData, key: str, types: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    frac = adata.obsm[key]
    names = [str(c) for c in frac.columns] if isinstance(frac, pd.DataFrame) else None
    arr = np.asarray(frac, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"obsm[{key!r}] must be a 2-D (observations x cell types) array, got {arr.shape}.")
    if types is not None:
        types = [str(t) for t in types]
        if names is not None:
            missing = [t for t in types if t not in names]
            if missing:
                raise KeyError(f"obsm[{key!r}] lacks the fitted cell types {missing[:5]}.")
            arr = np.asarray(frac[types], dtype=np.float64)
        elif arr.shape[1] != len(types):
            raise ValueError(
                f"obsm[{key!r}] has {arr.shape[1]} columns, the model was fitted on {len(types)}."
            )
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"obsm[{key!r}] must hold finite, non-negative cell-type fractions.")
    return arr, list(types) if types is not None else (names or [str(i) for i in range(arr.shape[1])])
