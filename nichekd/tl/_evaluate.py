"""Agreement of predicted niches with the teacher's, on held-out cells."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import TABLE_KEY
from .._core.records import stale_teacher
from .._core.table import get_table
from ..pp._split import MIN_PART_CELLS, check_split_label, stale_split
from ._composition import compare_compositions, match_niches

# scores on fewer cells than this are warned about, the floor below which nk.pp.spatial_split warns about a
# part (MIN_PART_CELLS). Simulated (5 niches, 40% of labels noise, ARI 0.36): the SD of the ARI over draws is
# 0.33 on 7 cells, 0.17 on 20, 0.10 on 50, 0.07 on 100 and 0.02 on 1,000
MIN_SCORED_CELLS = MIN_PART_CELLS


def match_labels(truth: np.ndarray, pred: np.ndarray) -> dict[str, str]:
    """Map predicted clusters to truth labels: Hungarian one-to-one on the overlap, extras to their majority.

    Examples
    --------
    >>> match_labels(np.array(["a", "a", "b"]), np.array(["1", "1", "0"]))
    {'1': 'a', '0': 'b'}
    """
    pairs = match_niches(truth, b=pred)
    mapping = dict(zip(pairs["niche_b"], pairs["niche_a"], strict=True))
    overlap = pd.crosstab(pd.Series(pred.astype(str)), pd.Series(truth.astype(str)))
    for cluster in overlap.index:  # more clusters than niches: the unmatched go to their majority niche
        mapping.setdefault(str(cluster), str(overlap.loc[cluster].idxmax()))
    return mapping


def _composition_jsd(truth: np.ndarray, pred: np.ndarray, cell_types: ad.AnnData) -> float:
    """Mean JSD of the cell-type compositions of niches matched by JSD (``compare_compositions``)."""
    work = cell_types.copy()
    work.obs["_truth"], work.obs["_pred"] = pd.Categorical(truth), pd.Categorical(pred)
    return compare_compositions(
        work, teacher_key="_truth", student_key="_pred", cell_type_key="_cell_types", n_permutations=0
    ).mean_jsd


def _check_scored_cells(
    adata: ad.AnnData, scored: np.ndarray, predictions: list[str], split_key: str | None, split: str | None
) -> None:
    """Warn when a prediction is scored on fewer than ``MIN_SCORED_CELLS`` cells: agreement on a handful of
    cells is noise, however it is printed (a warning, not a refusal: smoke tests on tiny crops still run)."""
    counts = {k: int((scored & adata.obs[k].notna().to_numpy()).sum()) for k in predictions}
    few = {k: n for k, n in counts.items() if n < MIN_SCORED_CELLS}
    if few:
        where = "every cell" if split_key is None else f"obs[{split_key!r}] == {split!r}"
        warnings.warn(
            f"Scoring on few cells ({where}, with a teacher niche and a prediction): {few}, fewer than "
            f"{MIN_SCORED_CELLS}; ARI, NMI and accuracy on so few cells are noise, not a result. Score on more "
            "held-out cells: redo the split with more test cells (nk.pp.spatial_split with fewer n_strips, "
            "another test_strip, a smaller buffer_um, or method='libraries'), or pass split_key=None to score "
            "every cell (the student's training cells included).",
            UserWarning,
            stacklevel=3,
        )


@inject_docs
def evaluate(
    sdata,
    *,
    teacher_key: str = "teacher_niche",
    predictions: Sequence[str] = ("student_niche",),
    split_key: str | None = "split",
    split: str | None = "test",
    cell_type_key: str | None = None,
    table_key: str = TABLE_KEY,
) -> pd.DataFrame:
    """Score predicted niches against the teacher's on the held-out cells.

    Predictions already in the teacher's label space (the student's) are scored directly; unsupervised
    baselines are first mapped to the teacher's niches by Hungarian matching on their overlap.

    Parameters
    ----------
    sdata
        %(sdata)s
    teacher_key
        %(teacher_key)s
    predictions
        ``obs`` columns to score.
    split_key, split
        Score only cells with ``obs[split_key] == split``; ``None`` scores every cell. Scores on fewer than
        ``MIN_SCORED_CELLS`` (50) cells come with a warning: agreement on a handful of cells is noise.
    cell_type_key
        ``obs`` column of cell types (or ``obsm`` per-spot fractions); adds the mean JSD between matched niches'
        cell-type compositions.
    table_key
        %(table_key)s

    Warns
    -----
    UserWarning
        When a student's record (``uns[key]['params']``, from :func:`~nichekd.tl.distill`) says it learned from
        another run of ``teacher_key`` than the one in the table (the teacher was re-run, or its labels
        changed, after ``distill``): re-run ``distill``. When a prediction was fitted with another split than
        today's ``obs[split_key]`` (``distill`` and ``histology_baseline`` record the fingerprint of the split they
        fitted on; the split was redone after them): the held-out cells may be cells it was trained on, so the
        scores are inflated. It is a warning, not a refusal, as for the teacher: re-run the fit on this split, or
        evaluate with the split it was trained on.

    Returns
    -------
    One row per prediction: ``ari``, ``nmi``, ``accuracy``, ``macro_f1``, ``f1_<niche>`` per teacher niche,
    ``composition_jsd`` (with cell types: mean Jensen-Shannon divergence of the cell-type compositions of
    niches matched by :func:`~nichekd.tl.compare_compositions`), ``matched`` (whether Hungarian matching was used), ``n_cells``.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.tl.evaluate(sdata, predictions=["student_niche", "he_leiden_niche"])  # doctest: +SKIP
    """
    _val.check_key("teacher_key", teacher_key)
    predictions = _val.check_keys("predictions", predictions)
    for name, value in (("split_key", split_key), ("split", split), ("cell_type_key", cell_type_key)):
        _val.check_key(name, value, optional=True)
    adata = get_table(sdata, table_key)
    missing = [k for k in [teacher_key, *predictions] if k not in adata.obs]
    if missing:
        raise KeyError(f"obs has no column(s) {missing}; run the teacher/distill/baselines first.")
    for key in predictions:  # a student distilled from an earlier run of this teacher
        stale = stale_teacher(adata, key, teacher_key)
        if stale is not None:
            warnings.warn(stale, UserWarning, stacklevel=2)
    if cell_type_key is not None and cell_type_key not in adata.obs and cell_type_key not in adata.obsm:
        raise KeyError(f"No cell types in obs[{cell_type_key!r}] (or per-spot fractions in obsm).")
    scored = np.ones(adata.n_obs, bool)
    if split_key is not None and split is not None:
        if split_key not in adata.obs:
            raise KeyError(f"No split in obs[{split_key!r}]; run nk.pp.spatial_split or pass split_key=None.")
        check_split_label(adata, split_key, split, use="evaluate scores", argument="split=")
        scored = (adata.obs[split_key].astype(str) == split).to_numpy()
        for key in predictions:  # fitted with another split: today's held-out cells may be its training cells
            stale = stale_split(adata, key, split_key)
            if stale is not None:
                warnings.warn(stale, UserWarning, stacklevel=2)
    t_col = adata.obs[teacher_key]
    scored &= t_col.notna().to_numpy()
    _check_scored_cells(adata, scored, predictions, split_key if split is not None else None, split)
    names = (
        [str(c) for c in t_col.cat.categories]
        if isinstance(t_col.dtype, pd.CategoricalDtype)
        else sorted(set(t_col.dropna().astype(str)))
    )
    types = None
    if cell_type_key is not None:  # a bare table of cell types (obs column or obsm fractions) for the JSD
        types = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names))
        if cell_type_key in adata.obs:
            types.obs["_cell_types"] = adata.obs[cell_type_key].to_numpy()
        else:
            types.obsm["_cell_types"] = adata.obsm[cell_type_key]
    from sklearn.metrics import accuracy_score, adjusted_rand_score, f1_score, normalized_mutual_info_score

    rows = []
    for key in predictions:
        keep = scored & adata.obs[key].notna().to_numpy()  # e.g. predict_niches(library=...) leaves NaN
        y_true = t_col.astype(str).to_numpy()[keep]
        y_pred = adata.obs[key].astype(str).to_numpy()[keep]
        # the student predicts in the teacher's label space; unsupervised clusters need matching
        direct = set(np.unique(y_pred)) <= set(names)
        mapped = y_pred if direct else np.vectorize(match_labels(y_true, y_pred).get, otypes=[object])(y_pred)
        f1 = f1_score(y_true, mapped, labels=names, average=None, zero_division=0)
        row = {
            "prediction": key,
            "ari": adjusted_rand_score(y_true, y_pred),
            "nmi": normalized_mutual_info_score(y_true, y_pred),
            "accuracy": accuracy_score(y_true, mapped),
            "macro_f1": float(np.mean(f1)),
            **{f"f1_{n}": float(v) for n, v in zip(names, f1, strict=True)},
            "matched": not direct,
            "n_cells": int(keep.sum()),
        }
        if types is not None:
            row["composition_jsd"] = _composition_jsd(y_true, y_pred, types[keep])
        rows.append(row)
    return pd.DataFrame(rows).set_index("prediction")


@inject_docs
def verdict(
    scores: pd.DataFrame,
    *,
    student: str = "student_niche",
    metric: str = "ari",
    tie_margin: float = 0.02,
) -> str:
    """One plain sentence saying whether the student beats every baseline in a table of scores.

    Tutorials print it under their table, so what they say cannot drift from what they computed: the test
    suite compares each tutorial's stated verdict with this sentence.

    Parameters
    ----------
    scores
        One row per prediction, a column ``metric`` (e.g. from :func:`evaluate`; a ``"<metric>_sd"`` column,
        from averaging over seeds, is reported too).
    student
        The row of the student.
    metric
        Column compared (higher is better).
    tie_margin
        Differences smaller than this are a tie.

    Returns
    -------
    ``"Verdict: the student leads ..."``, ``"... ties ..."`` or ``"... loses ..."``, with the numbers.

    Examples
    --------
    >>> import pandas as pd
    >>> s = pd.DataFrame({"ari": [0.6, 0.4]}, index=["student_niche", "he_leiden_niche"])
    >>> verdict(s)
    'Verdict: the student leads on ARI: 0.600 vs 0.400 for the best baseline (he_leiden_niche), 1.50x.'
    """
    _val.check_nonnegative("tie_margin", tie_margin)
    if metric not in scores.columns:
        raise KeyError(f"No column {metric!r} in the scores; they have {list(scores.columns)}.")
    if student not in scores.index:
        raise KeyError(f"No row {student!r} in the scores; they have {list(scores.index)}.")
    others = scores.drop(index=student)
    if others.empty:
        raise ValueError("The scores hold no baseline to compare the student with.")
    best = str(others[metric].astype(float).idxmax())
    s, b = float(scores.loc[student, metric]), float(scores.loc[best, metric])

    def fmt(row: str, value: float) -> str:
        sd = f"{metric}_sd"
        return f"{value:.3f}" + (f" ± {float(scores.loc[row, sd]):.3f}" if sd in scores.columns else "")

    name = metric.upper() if len(metric) <= 4 else metric
    ratio = f", {s / b:.2f}x" if b > 0 else ""
    if s - b > tie_margin:
        return f"Verdict: the student leads on {name}: {fmt(student, s)} vs {fmt(best, b)} for the best baseline ({best}){ratio}."
    if b - s > tie_margin:
        return f"Verdict: the student loses on {name}: {fmt(student, s)} vs {fmt(best, b)} for {best}{ratio}."
    return f"Verdict: the student ties on {name}: {fmt(student, s)} vs {fmt(best, b)} for {best} (within {tie_margin:g})."
