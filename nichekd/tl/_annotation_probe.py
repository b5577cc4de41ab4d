"""The paper's external check: how well do niche assignments predict an independent annotation?

A support vector machine (scikit-learn) is trained to predict an external label (a pathologist's region, a
cortical layer) from each cell's niche assignment, one-hot or probabilities, and scored by macro-F1 on held-out
sections or spatial blocks. Teacher, student and baselines go through the same folds, side by side, with a
chance level, as in the paper's annotation probe (Hizmi et al., Table C).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._docs import inject_docs
from .._elements import micron_coords
from .._layout import LIBRARY_KEY, TABLE_KEY, get_table, library_labels
from .._utils import store_params

GROUPINGS = ("libraries", "blocks")
CHANCE = "chance"


def _assignment(adata, key: str, use_proba: bool) -> tuple[np.ndarray, str]:
    """Per-cell niche assignment: ``obsm[f"{key}_proba"]`` (probabilities) or the one-hot of ``obs[key]``."""
    if use_proba and f"{key}_proba" in adata.obsm:
        x = np.asarray(adata.obsm[f"{key}_proba"], dtype=np.float32)
        if x.ndim != 2 or len(x) != adata.n_obs or not np.isfinite(x).all():
            raise ValueError(f"obsm[{key + '_proba'!r}] must be a finite (n_cells, K) array.")
        return x, "proba"
    if key in adata.obsm:
        x = np.asarray(adata.obsm[key], dtype=np.float32)
        if x.ndim != 2 or not np.isfinite(x).all():
            raise ValueError(f"obsm[{key!r}] must be a finite (n_cells, K) array of assignments.")
        return x, "obsm"
    if key not in adata.obs:
        raise KeyError(
            f"No niche assignment {key!r}: neither obs[{key!r}] nor obsm[{key + '_proba'!r}]; obs has "
            f"{list(adata.obs.columns)[:20]}."
        )
    col = adata.obs[key].astype("category")
    onehot = np.zeros((adata.n_obs, len(col.cat.categories)), dtype=np.float32)
    known = col.cat.codes.to_numpy() >= 0
    onehot[np.flatnonzero(known), col.cat.codes.to_numpy()[known]] = 1.0
    return onehot, "onehot"


def _folds(sdata, adata, groups: str, library_key: str, n_blocks: int, table_key: str) -> np.ndarray:
    """Fold id of each cell: its section, or its spatial block within its section."""
    libs = library_labels(adata, library_key)
    codes = np.asarray(libs.codes)
    if groups == "libraries":
        return codes
    from ..pp._split import block_ids

    xy = micron_coords(sdata, table_key=table_key, library_key=library_key)
    out = np.empty(adata.n_obs, dtype=np.int64)
    for c in np.unique(codes):
        sel = codes == c
        out[sel] = c * n_blocks * n_blocks + block_ids(xy[sel], n_blocks)
    return out


@inject_docs
def annotation_probe(
    sdata: Any,
    *,
    annotation_key: str,
    keys: Sequence[str],
    groups: str = "libraries",
    n_blocks: int = 2,
    use_proba: bool = True,
    subset: str | None = None,
    kernel: str = "rbf",
    C: float = 1.0,
    max_train: int = 5_000,
    n_chance: int = 20,
    library_key: str = LIBRARY_KEY,
    table_key: str = TABLE_KEY,
    key_added: str = "annotation_probe",
    random_state: int = 0,
) -> pd.DataFrame:
    """Predict an external annotation from niche assignments with an SVM; macro-F1 on held-out groups.

    For every assignment in ``keys`` (teacher, student, baselines), a support vector classifier
    (``sklearn.svm.SVC``, balanced class weights) learns ``obs[annotation_key]`` from the assignment on all
    folds but one and is scored on the held-out fold by macro-F1 (every annotation class weighs the same).
    Folds are sections (``groups="libraries"``, leave one section out) or, within each section, an
    ``n_blocks`` x ``n_blocks`` grid of spatial blocks (``"blocks"``): neighbouring cells never sit on both
    sides. **Chance level**: the macro-F1 of guessing each held-out cell's label at random with the training
    fold's label frequencies (``DummyClassifier(strategy="stratified")``, mean of ``n_chance`` draws), which is
    what an assignment carrying no information about the annotation reaches in expectation.

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` or its table.
    annotation_key
        ``obs`` column of the external annotation; cells where it is missing are left out.
    keys
        Niche assignments to compare: ``obs`` columns (one-hot), with ``obsm[f"{key}_proba"]`` used instead
        when present and ``use_proba``, or ``obsm`` keys of per-cell assignments.
    groups
        ``"libraries"`` (leave one section out; needs at least two) or ``"blocks"``.
    n_blocks
        Blocks per axis and section for ``groups="blocks"``.
    use_proba
        Use niche probabilities where they exist (else one-hot of the labels).
    subset
        Boolean ``obs`` column (or a column whose value ``"test"`` marks the cells, e.g. the split) restricting
        the probe, e.g. to the held-out cells of a student.
    kernel, C
        SVM kernel and regularisation.
    max_train
        Training cells per fold (a seeded random subsample above this keeps the SVM fast).
    n_chance
        Random draws averaged for the chance level.
    library_key
        %(library_key)s
    table_key
        %(table_key)s
    key_added
        Results and parameters go to ``uns[key_added]``.
    random_state
        %(random_state)s

    Returns
    -------
    DataFrame indexed by assignment (``keys`` then ``"chance"``): ``macro_f1`` (mean over folds), ``sd``
    (over folds), one column per fold and ``input`` (``proba``, ``onehot`` or ``obsm``). Also stored in
    ``uns[key_added]['results']``.

    Examples
    --------
    >>> import nichekd as nk
    >>> df = nk.tl.annotation_probe(sdata, annotation_key="layer", keys=["student_niche", "he_leiden_niche"], subset="split")
    >>> df[["macro_f1", "sd"]]  # doctest: +SKIP
    """
    from sklearn.dummy import DummyClassifier
    from sklearn.metrics import f1_score
    from sklearn.svm import SVC
    from threadpoolctl import threadpool_limits

    adata = get_table(sdata, table_key)
    if groups not in GROUPINGS:
        raise ValueError(f"groups must be one of {GROUPINGS}, got {groups!r}.")
    if isinstance(keys, str) or not len(keys):
        raise ValueError(f"keys must be a non-empty list of niche assignments, got {keys!r}.")
    if CHANCE in keys:
        raise ValueError(f"{CHANCE!r} is reserved for the chance level; rename that assignment.")
    if annotation_key not in adata.obs:
        raise KeyError(f"No obs[{annotation_key!r}]; obs has {list(adata.obs.columns)[:20]}.")
    if groups == "blocks" and n_blocks < 2:
        raise ValueError(f"n_blocks must be at least 2, got {n_blocks}.")
    rows = adata.obs[annotation_key].notna().to_numpy()
    if subset is not None:
        if subset not in adata.obs:
            raise KeyError(f"subset={subset!r} is not an obs column.")
        col = adata.obs[subset]
        rows &= col.to_numpy(dtype=bool) if col.dtype == bool else (col.astype(str) == "test").to_numpy()
    inputs = {k: _assignment(adata, k, use_proba) for k in keys}
    y = adata.obs[annotation_key].astype(str).to_numpy()[rows]
    folds = _folds(sdata, adata, groups, library_key, n_blocks, table_key)[rows]
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(
            f"The probe needs at least two {'sections' if groups == 'libraries' else 'blocks'} with annotated "
            "cells to cross-validate; use groups='blocks' for a single section."
        )
    if len(np.unique(y)) < 2:
        raise ValueError(f"obs[{annotation_key!r}] has a single label on these cells; nothing to predict.")
    names = [str(f) for f in fold_ids]
    if groups == "libraries":
        cats = library_labels(adata, library_key).categories
        names = [str(cats[f]) for f in fold_ids]
    rng = np.random.default_rng(random_state)
    scores: dict[str, list[float]] = {k: [] for k in [*keys, CHANCE]}
    used_folds = []
    for f, name in zip(fold_ids, names, strict=True):
        test, train = folds == f, folds != f
        if len(np.unique(y[train])) < 2 or not test.any():
            continue  # a fold whose training side has one label cannot train a classifier
        used_folds.append(name)
        train_idx = np.flatnonzero(train)
        if len(train_idx) > max_train:
            train_idx = np.sort(rng.choice(train_idx, max_train, replace=False))
        labels = sorted(set(y[train]) | set(y[test]))
        for k in keys:
            x = inputs[k][0][rows]
            # one BLAS thread: libsvm's kernels are small; threads only contend on a shared machine
            with threadpool_limits(1):
                svm = SVC(kernel=kernel, C=C, class_weight="balanced", random_state=random_state)
                pred = svm.fit(x[train_idx], y[train_idx]).predict(x[test])
            scores[k].append(float(f1_score(y[test], pred, average="macro", labels=labels, zero_division=0)))
        chance = []
        for _ in range(n_chance):
            dummy = DummyClassifier(strategy="stratified", random_state=int(rng.integers(2**31)))
            pred = dummy.fit(np.zeros((len(train_idx), 1)), y[train_idx]).predict(np.zeros((test.sum(), 1)))
            chance.append(f1_score(y[test], pred, average="macro", labels=labels, zero_division=0))
        scores[CHANCE].append(float(np.mean(chance)))
    if not used_folds:
        raise ValueError("No fold has at least two annotation labels on its training side.")
    table = pd.DataFrame(scores, index=pd.Index(used_folds, name="fold")).T
    out = pd.DataFrame(
        {"macro_f1": table.mean(1), "sd": table.std(1, ddof=1) if len(used_folds) > 1 else np.nan}
    )
    out = pd.concat([out, table], axis=1)
    out["input"] = [inputs[k][1] for k in keys] + ["labels at random"]
    out.index.name = "assignment"
    params = {
        "annotation_key": annotation_key,
        "keys": list(keys),
        "groups": groups,
        "n_blocks": n_blocks if groups == "blocks" else None,
        "use_proba": use_proba,
        "subset": subset,
        "kernel": kernel,
        "C": C,
        "max_train": max_train,
        "n_chance": n_chance,
        "n_cells": int(rows.sum()),
        "random_state": random_state,
    }
    store_params(
        adata,
        key_added,
        params,
        results={str(k): {str(c): v for c, v in row.items()} for k, row in out.iterrows()},
    )
    return out
