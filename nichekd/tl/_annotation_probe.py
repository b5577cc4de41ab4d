"""The paper's external check: how well do niche assignments predict an independent annotation?

A support vector machine (scikit-learn) is trained to predict an external label (a pathologist's region, a
cortical layer) from each cell's niche assignment and scored by macro-F1 on held-out sections or spatial
blocks. As in the paper's annotation probe (Hizmi et al., Table C), only the held-out cells of the split are
probed by default (cells a student was trained on would inflate its score), every assignment is encoded the
same way (one-hot of its niche labels by default), and teacher, student and baselines go through the same
folds on the same cells, side by side, with a chance level.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import LIBRARY_KEY, TABLE_KEY
from .._core.records import claim, store_params
from .._core.runtime import one_blas_thread
from .._core.spatial import micron_coords
from .._core.table import get_table, library_labels
from ..pp._split import MAX_BLOCKS

GROUPINGS = ("libraries", "blocks")
KERNELS = ("linear", "poly", "rbf", "sigmoid")
# random draws averaged for the chance level (each one a full prediction of the held-out fold)
MAX_CHANCE = 10_000
CHANCE = "chance"


def _check_keys(adata, keys: Sequence[str], use_proba: bool) -> None:
    """Every key must offer the one encoding asked for: an ``obs`` column, or ``obsm[f"{key}_proba"]``."""
    for k in keys:
        if use_proba:
            if f"{k}_proba" not in adata.obsm:
                raise ValueError(
                    f"use_proba=True needs probabilities for every key, but {k!r} has no obsm[{k + '_proba'!r}] "
                    "(e.g. a clustering baseline); pass use_proba=False to compare the one-hot niche labels "
                    "of every key, or leave that key out."
                )
        elif k not in adata.obs:
            raise KeyError(
                f"No niche assignment {k!r}: obs has no column {k!r} (first columns: "
                f"{list(adata.obs.columns)[:20]})."
            )


def _assignment(adata, key: str, rows: np.ndarray, use_proba: bool) -> np.ndarray:
    """Niche assignment of the cells in ``rows``: ``obsm[f"{key}_proba"]`` or the one-hot of ``obs[key]``."""
    if use_proba:
        x = np.asarray(adata.obsm[f"{key}_proba"], dtype=np.float32)
        if x.ndim != 2 or len(x) != adata.n_obs or not np.isfinite(x[rows]).all():
            raise ValueError(
                f"obsm[{key + '_proba'!r}] must be a finite (n_cells, K) array on the probed cells."
            )
        return x[rows]
    # one column per niche present on the probed cells (the others would be all zero)
    col = pd.Categorical(adata.obs[key].to_numpy()[rows])
    col = col.remove_unused_categories()
    onehot = np.zeros((int(rows.sum()), len(col.categories)), dtype=np.float32)
    onehot[np.arange(len(col)), col.codes] = 1.0  # rows holds no missing labels (left out before)
    return onehot


def _folds(
    sdata, adata, rows: np.ndarray, groups: str, library_key: str, n_blocks: int, table_key: str
) -> np.ndarray:
    """Fold id of each probed cell: its section, or its spatial block within its section, the grid being laid
    over the bounding box of the section's probed cells (e.g. its test strip)."""
    codes = np.asarray(library_labels(adata, library_key).codes)[rows]
    if groups == "libraries":
        return codes
    from ..pp._split import block_ids

    xy = micron_coords(sdata, table_key=table_key, library_key=library_key)[rows]
    out = np.empty(len(codes), dtype=np.int64)
    for c in np.unique(codes):
        sel = codes == c
        out[sel] = c * n_blocks * n_blocks + block_ids(xy[sel], n_blocks)
    return out


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the labels the held-out fold holds or is predicted to hold: a label the fold lacks and
    nobody predicts there cannot be scored (counting it as 0 would cap even a perfect assignment)."""
    from sklearn.metrics import f1_score

    labels = sorted(set(y_true) | set(y_pred))
    return float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0))


@inject_docs
def annotation_probe(
    sdata: Any,
    *,
    annotation_key: str,
    keys: Sequence[str],
    split_key: str | None = "split",
    split: str | None = "test",
    groups: str = "libraries",
    n_blocks: int = 2,
    use_proba: bool = False,
    kernel: str = "rbf",
    C: float = 1.0,
    max_train: int = 5_000,
    n_chance: int = 20,
    library_key: str = LIBRARY_KEY,
    table_key: str = TABLE_KEY,
    key_added: str = "annotation_probe",
    random_state: int = 0,
    subset: str | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Predict an external annotation from niche assignments with an SVM; macro-F1 on held-out groups.

    The probe runs on the held-out cells only: those with ``obs[split_key] == split`` (the test side of
    :func:`nichekd.pp.spatial_split`), annotated and with a niche label in every key. Without a split it
    raises rather than silently scoring the cells a student was trained on; ``split_key=None`` probes every
    cell on purpose. For every assignment in ``keys`` (teacher, student, baselines), a support vector
    classifier (``sklearn.svm.SVC``, balanced class weights) learns ``obs[annotation_key]`` from the
    assignment on all folds but one and is scored on the held-out fold by macro-F1 (every annotation class
    weighs the same). Folds are formed from the probed cells: sections (``groups="libraries"``, leave one
    section out) or, within each section, an ``n_blocks`` x ``n_blocks`` grid over the bounding box of its
    probed cells (``"blocks"``, e.g. of its test strip): contiguous regions, not cells drawn at random.
    Every key is encoded the same way, so that the SVM compares the niches and not their encodings: the
    one-hot of ``obs[key]`` (the paper's probe of niche assignments), or with ``use_proba=True`` the niche
    probabilities ``obsm[f"{key}_proba"]``, which every key must then have. **Chance level**: the macro-F1 of
    guessing each held-out cell's label at random with the training fold's label frequencies
    (``DummyClassifier(strategy="stratified")``, mean of ``n_chance`` draws), which is what an assignment
    carrying no information about the annotation reaches in expectation.

    Parameters
    ----------
    sdata
        %(sdata)s
    annotation_key
        ``obs`` column of the external annotation; cells where it is missing are left out.
    keys
        Niche assignments to compare: ``obs`` columns of niche labels (with ``use_proba``, keys whose
        probabilities are in ``obsm[f"{key}_proba"]``). Cells without a label in some key are left out of
        every key, so that all are scored on the same cells.
    split_key
        %(split_key)s
        ``None`` probes every cell (then a student is scored partly on the cells it was trained on).
    split
        Side of the split to probe: ``obs[split_key] == split``; ``None`` probes every cell.
    groups
        ``"libraries"`` (leave one section out; needs at least two with probed cells) or ``"blocks"``.
    n_blocks
        Blocks per axis and section for ``groups="blocks"``.
    use_proba
        Encode every key by its niche probabilities ``obsm[f"{key}_proba"]`` instead of the one-hot of its
        labels; raises if any key has none.
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
    subset
        Deprecated: use ``split_key`` (and ``split``). A split column probes its ``"test"`` cells, a boolean
        column its ``True`` cells.
    overwrite
        %(overwrite)s

    Returns
    -------
    DataFrame indexed by assignment (``keys`` then ``"chance"``): ``macro_f1`` (mean over folds), ``sd``
    (over folds), one column per fold and ``input`` (``onehot`` or ``proba``, the same for every key). Also
    stored in ``uns[key_added]['results']``; ``uns[key_added]['params']`` records which cells were probed
    (``scored``, ``split_key``, ``split``, ``n_cells``) and the encoding (``use_proba``).

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.pp.spatial_split(sdata, method="libraries", test_libraries=["151509", "151510"])  # doctest: +SKIP
    >>> nk.tl.distill(sdata, features_key="he")  # doctest: +SKIP
    >>> df = nk.tl.annotation_probe(
    ...     sdata, annotation_key="layer", keys=["student_niche", "he_leiden_niche"]
    ... )  # doctest: +SKIP
    >>> df[["macro_f1", "sd"]]  # test cells of 151509 and 151510, one-hot for both keys  # doctest: +SKIP
    >>> nk.tl.annotation_probe(sdata, annotation_key="layer", keys=["student_niche"], split_key=None)  # doctest: +SKIP
    """
    _val.check_choice("groups", groups, GROUPINGS)
    _val.check_int("n_blocks", n_blocks, minimum=2, maximum=MAX_BLOCKS)
    _val.check_choice("kernel", kernel, KERNELS)
    _val.check_positive("C", C)
    _val.check_int("max_train", max_train, minimum=2)
    _val.check_int("n_chance", n_chance, maximum=MAX_CHANCE)
    _val.check_seed("random_state", random_state)
    from sklearn.dummy import DummyClassifier
    from sklearn.svm import SVC

    adata = get_table(sdata, table_key)
    written = claim(adata, [("uns", key_added)], writer="annotation_probe", overwrite=overwrite)
    if isinstance(keys, str) or not len(keys):
        raise ValueError(f"keys must be a non-empty list of niche assignments, got {keys!r}.")
    keys = list(keys)
    if CHANCE in keys:
        raise ValueError(f"{CHANCE!r} is reserved for the chance level; rename that assignment.")
    if annotation_key not in adata.obs:
        raise KeyError(f"No obs[{annotation_key!r}]; obs has {list(adata.obs.columns)[:20]}.")
    _check_keys(adata, keys, use_proba)

    # which cells are probed: the held-out side of the split (default), a deprecated subset, or all
    mask = None
    if subset is not None:
        warnings.warn(
            "annotation_probe(subset=...) is deprecated: the probe now scores obs['split'] == 'test' by "
            "default; pass split_key=... (and split=...) instead.",
            FutureWarning,
            stacklevel=2,
        )
        if subset not in adata.obs:
            raise KeyError(f"subset={subset!r} is not an obs column.")
        if adata.obs[subset].dtype == bool:
            mask, split_key, split = adata.obs[subset].to_numpy(dtype=bool), subset, True
        else:
            split_key, split = subset, "test"
    if mask is None and split_key is not None and split is not None:
        if split_key not in adata.obs:
            raise KeyError(
                f"No split in obs[{split_key!r}]: the probe scores the held-out cells of a split by default. "
                f"Run nk.pp.spatial_split(sdata) first (and train the student on its train side), or pass "
                "split_key=None to probe every cell (a student is then scored on its own training cells)."
            )
        mask = (adata.obs[split_key].astype(str) == str(split)).to_numpy()
        if not mask.any():
            raise ValueError(
                f"No cell has obs[{split_key!r}] == {split!r}; values: "
                f"{sorted(adata.obs[split_key].dropna().astype(str).unique())}."
            )
    if mask is None:
        split_key = split = None
        scored = "all cells"
        mask = np.ones(adata.n_obs, dtype=bool)
    else:
        scored = f"obs[{split_key!r}] == {split!r}"
    rows = mask & adata.obs[annotation_key].notna().to_numpy()
    for k in keys:  # the same cells for every key
        if k in adata.obs:
            rows &= adata.obs[k].notna().to_numpy()
    if not rows.any():
        raise ValueError(f"No cell with {scored} has an annotation and a niche label in every key.")
    inputs = {k: _assignment(adata, k, rows, use_proba) for k in keys}
    y = adata.obs[annotation_key].astype(str).to_numpy()[rows]
    folds = _folds(sdata, adata, rows, groups, library_key, n_blocks, table_key)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(
            f"The probe needs at least two {'sections' if groups == 'libraries' else 'blocks'} with probed "
            f"cells ({scored}) to cross-validate; use groups='blocks' for a single section."
        )
    if len(np.unique(y)) < 2:
        raise ValueError(
            f"obs[{annotation_key!r}] has a single label on the probed cells; nothing to predict."
        )
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
        for k in keys:
            x = inputs[k]
            # one BLAS thread: libsvm's kernels are small; threads only contend on a shared machine
            with one_blas_thread(None):
                svm = SVC(kernel=kernel, C=C, class_weight="balanced", random_state=random_state)
                pred = svm.fit(x[train_idx], y[train_idx]).predict(x[test])
            scores[k].append(_macro_f1(y[test], pred))
        chance = []
        for _ in range(n_chance):
            dummy = DummyClassifier(strategy="stratified", random_state=int(rng.integers(2**31)))
            pred = dummy.fit(np.zeros((len(train_idx), 1)), y[train_idx]).predict(np.zeros((test.sum(), 1)))
            chance.append(_macro_f1(y[test], pred))
        scores[CHANCE].append(float(np.mean(chance)))
    if not used_folds:
        raise ValueError("No fold has at least two annotation labels on its training side.")
    table = pd.DataFrame(scores, index=pd.Index(used_folds, name="fold")).T
    out = pd.DataFrame(
        {"macro_f1": table.mean(1), "sd": table.std(1, ddof=1) if len(used_folds) > 1 else np.nan}
    )
    out = pd.concat([out, table], axis=1)
    encoding = "proba" if use_proba else "onehot"
    out["input"] = [encoding] * len(keys) + ["labels at random"]
    out.index.name = "assignment"
    params = {
        "annotation_key": annotation_key,
        "keys": keys,
        "split_key": split_key,
        "split": split if split is None or isinstance(split, str) else str(split),
        "scored": scored,
        "groups": groups,
        "n_blocks": n_blocks if groups == "blocks" else None,
        "use_proba": use_proba,
        "input": encoding,
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
        claim=written,
    )
    return out
