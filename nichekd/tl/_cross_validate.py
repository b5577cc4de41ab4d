"""Cross-validation across sections (or spatial blocks): does the student generalise to unseen tissue?

Each fold holds out one section (``folds="libraries"``) or one spatial block of every section
(``folds="blocks"``), distils a student on the rest and scores it, next to unsupervised baselines on the same
features, against the teacher on the held-out cells.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.feature_record import resolve_features_key
from .._core.keys import LIBRARY_KEY, SPATIAL_KEY, TABLE_KEY
from .._core.spatial import micron_coords, microns_record
from .._core.table import get_table, library_labels
from ..pp._split import MAX_BLOCKS, grid_split
from ._baselines import METHODS as BASELINES
from ._distill import teacher_targets

FOLDS = ("libraries", "blocks")
_SPLIT = "_cv_split"


# arguments of nk.tl.distill itself (the rest of distill_kwargs sets the student)
_DISTILL_OWN = ("augmented_key", "device", "progress")


def _slim_table(adata: ad.AnnData, keys_obs: Sequence[str], keys_obsm: Sequence[str],
                keys_uns: Sequence[str]) -> ad.AnnData:  # fmt: skip
    """A table holding only what the fold needs (no counts): cheap to copy and to write into."""
    work = ad.AnnData(obs=adata.obs[[k for k in keys_obs if k in adata.obs]].copy())
    for k in keys_obsm:
        if k in adata.obsm:
            work.obsm[k] = np.asarray(adata.obsm[k]).copy()
    for k in keys_uns:
        if k in adata.uns:
            work.uns[k] = adata.uns[k]
    return work


def _block_folds(xy: np.ndarray, libs: np.ndarray, n_blocks: int, buffer_um: float) -> dict[str, np.ndarray]:
    """One fold per block of an ``n_blocks`` x ``n_blocks`` grid over each section: that block is test."""
    folds = {}
    for b in range(n_blocks * n_blocks):
        labels = np.empty(len(xy), dtype=object)
        for lib in np.unique(libs):
            sel = libs == lib
            labels[sel] = grid_split(xy[sel], n_blocks, n_blocks, np.array([b]), buffer_um)
        folds[f"block{b}"] = labels
    return folds


def _check_cv_args(folds, baselines, n_blocks, buffer_um, architecture, distill_kwargs, random_state) -> None:
    """Every option of :func:`cross_validate`, the students' ``distill_kwargs`` included, before any work."""

    _val.check_choice("folds", folds, FOLDS)
    if isinstance(baselines, str) or not isinstance(baselines, Sequence):
        raise TypeError(f"baselines must be a list of names from {BASELINES}, got {baselines!r}.")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}; choose from {BASELINES}.")
    _val.check_int("n_blocks", n_blocks, minimum=2, maximum=MAX_BLOCKS)
    _val.check_optional_nonnegative("buffer_um", buffer_um, unit="microns")
    _val.check_seed("random_state", random_state)
    fold_student(architecture, distill_kwargs)  # every student setting checked before any fold runs


def fold_student(architecture: str, distill_kwargs: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """The unfitted student each fold trains and the other ``distill`` arguments, from ``distill_kwargs``
    (``model=`` and the student's settings, e.g. ``epochs``; ``augmented_key``, ``device``, ``progress``)."""
    from ..models.student import NicheStudent
    from ._distill import student_settings

    if distill_kwargs is not None and not isinstance(distill_kwargs, Mapping):
        raise TypeError(f"distill_kwargs must be a dict of nk.tl.distill arguments, got {distill_kwargs!r}.")
    settings = dict(distill_kwargs or {})
    own = {k: settings.pop(k) for k in _DISTILL_OWN if k in settings}
    template = student_settings(settings.pop("model", None), {})
    allowed = NicheStudent.settings()
    wrong = sorted(set(settings) - allowed)
    if wrong:
        raise TypeError(
            f"distill_kwargs has keys that are not nk.tl.distill options or that cross_validate sets itself: "
            f"{wrong} (pass architecture= and random_state= to cross_validate)."
        )
    return NicheStudent(**{**template.get_params(), "architecture": architecture, **settings}), own


@inject_docs
def cross_validate(
    sdata: Any,
    *,
    teacher_key: str = "teacher_niche",
    features_key: str | None = None,
    library_key: str = LIBRARY_KEY,
    folds: str = "libraries",
    fold_key: str | None = None,
    n_blocks: int = 2,
    buffer_um: float | None = None,
    architecture: str = "transformer",
    baselines: Sequence[str] = ("leiden", "kmeans", "teacher"),
    neighbourhood_baselines: bool = True,
    transductive_baselines: bool = False,
    distill_kwargs: Mapping[str, Any] | None = None,
    random_state: int = 0,
    table_key: str = TABLE_KEY,
    progress: bool = True,
) -> pd.DataFrame:
    """Leave-one-section-out (or leave-one-block-out) scores of the student and the baselines.

    For every fold, a student is distilled (``nk.tl.distill``) on the training cells only and predicts the
    held-out cells; every baseline (``nk.tl.histology_baseline``) is fitted on the same training cells and
    labels the held-out cells with neighbourhoods within the held-out part, as the student does (the
    transductive variant, ``transductive_baselines=True``, clusters the held-out cells' features alone: the
    most favourable setting for an unsupervised method, and not the student's footing). Both are scored
    against the teacher on the held-out cells. The teacher (``teacher_key``) is computed beforehand, on all
    sections jointly (one label space), e.g. with ``nk.tl.teacher_niches(sdata, K, batch_correct=True)``; it
    has then seen the held-out sections' expression (a warning says so once). Nothing is written to
    ``sdata``.

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` in the standard layout, or its table.
    teacher_key
        %(teacher_key)s
    features_key
        ``obsm`` key of the histology features; default the only one ``nk.pp.histology_features`` wrote.
        Augmented views in ``obsm[f"{features_key}_aug"]`` are used by the student as ``distill`` does.
    library_key
        %(library_key)s
    folds
        ``"libraries"``: each section is held out once (needs at least 2 sections). ``"blocks"``: each block of
        an ``n_blocks`` x ``n_blocks`` grid over every section is held out once (for a single section), cells
        within ``buffer_um`` of the border dropped.
    fold_key
        With ``folds="libraries"``: an ``obs`` column grouping sections (e.g. ``"animal"``, ``"donor"``); each
        value is held out once (all its sections together) and each held-out section is scored on its own
        (rows named by section). ``None``: one section per fold.
    n_blocks
        Grid size per axis for ``folds="blocks"``.
    buffer_um
        Border buffer for ``folds="blocks"``; default half the features' patch size.
    architecture
        Student architecture (``"transformer"``, the default as in :func:`nichekd.tl.distill`, or ``"mlp"``).
    baselines
        Unsupervised baselines among ``"leiden"``, ``"kmeans"``, ``"teacher"`` (teacher's method on image
        features).
    neighbourhood_baselines
        Also run ``leiden``/``kmeans`` on ``[own, neighbourhood-mean]`` features (names ``leiden_nbr``,
        ``kmeans_nbr``): the morphology baselines that see the same context as the student.
    transductive_baselines
        Fit each baseline on the held-out cells themselves instead of the training cells.
    distill_kwargs
        Further arguments of ``nk.tl.distill`` (``epochs``, ``tta``, ``augmented_key``, ...).
    random_state
        %(random_state)s
    table_key
        %(table_key)s
    progress
        %(progress)s

    Returns
    -------
    DataFrame indexed by ``(fold, method)`` with columns ``ari``, ``nmi``, ``n_test``; ``method`` is
    ``"student"`` or a baseline. Rows with ``fold == "mean"`` and ``fold == "std"`` summarise over folds; the
    column ``margin`` is the method's ARI minus the best baseline ARI of that fold (for the student: its lead).

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.st_mob()  # doctest: +SKIP
    >>> nk.tl.teacher_niches(sdata, n_niches=5, batch_correct=True)  # doctest: +SKIP
    >>> nk.pp.histology_features(sdata, backbone="stain", patch_size_um=300, standardize="library")  # doctest: +SKIP
    >>> scores = nk.tl.cross_validate(sdata, features_key="X_stain")  # doctest: +SKIP
    >>> scores.loc["mean"]  # doctest: +SKIP
    """
    from ._baselines import histology_baseline
    from ._distill import distill

    _check_cv_args(folds, baselines, n_blocks, buffer_um, architecture, distill_kwargs, random_state)
    adata = get_table(sdata, table_key)
    logits, names, _ = teacher_targets(adata, teacher_key)
    teacher = adata.uns.get(teacher_key, {}).get("params", {}) if teacher_key in adata.uns else {}
    if teacher and teacher.get("method") != "labels" and teacher.get("split_key") is None:
        warnings.warn(
            f"The teacher {teacher_key!r} was fitted on every section, the held-out ones included (one label "
            "space for all folds): the student's targets on the training sections depend on held-out expression.",
            UserWarning,
            stacklevel=2,
        )
    features_key = resolve_features_key(adata, features_key)
    if features_key not in adata.obsm:
        raise KeyError(
            f"No histology features in obsm[{features_key!r}]; run nk.pp.histology_features first. "
            f"obsm has {sorted(adata.obsm.keys())}."
        )
    if not np.isfinite(np.asarray(adata.obsm[features_key], dtype=np.float32)).all():
        raise ValueError(f"obsm[{features_key!r}] has NaN or infinite values; drop those cells or recompute.")
    xy = micron_coords(sdata, table_key=table_key, library_key=library_key)
    if folds == "libraries" and library_key not in adata.obs:
        raise KeyError(f"No obs[{library_key!r}]: leave-one-section-out needs the section of every cell.")
    libs = np.asarray(library_labels(adata, library_key)).astype(str)
    sections = list(pd.unique(libs))
    if folds == "libraries":
        if len(sections) < 2:
            raise ValueError(
                f"Only one section ({sections}) in obs[{library_key!r}]: nothing to leave out. Use "
                "folds='blocks' to hold out spatial blocks of it."
            )
        if fold_key is None:
            fold_labels = {s: np.where(libs == s, "test", "train").astype(object) for s in sections}
        else:
            if fold_key not in adata.obs:
                raise KeyError(f"No obs[{fold_key!r}] to group sections into folds; pass an existing column.")
            fold_of = adata.obs[fold_key].astype(str).to_numpy()
            split = pd.crosstab(libs, fold_of).gt(0).sum(1)
            if (split > 1).any():
                raise ValueError(
                    f"Sections {split[split > 1].index.tolist()} span several values of obs[{fold_key!r}]; "
                    "each section must belong to one fold."
                )
            values = list(pd.unique(fold_of))
            if len(values) < 2:
                raise ValueError(f"obs[{fold_key!r}] has one value ({values}): nothing to leave out.")
            fold_labels = {v: np.where(fold_of == v, "test", "train").astype(object) for v in values}
    else:
        if buffer_um is None:
            patch = adata.uns.get(features_key, {}).get("params", {}).get("patch_size_um")
            if patch is None:
                raise ValueError("buffer_um is required: the features record no patch size.")
            buffer_um = float(patch) / 2.0
        fold_labels = _block_folds(xy, libs, int(n_blocks), float(buffer_um))
    k = len(names)
    for fold, lab in fold_labels.items():
        n_test, n_train = int((lab == "test").sum()), int((lab == "train").sum())
        if n_test < max(2 * k, 10) or n_train < max(2 * k, 10):
            raise ValueError(
                f"Fold {fold!r} has {n_train} training and {n_test} held-out cells; need at least "
                f"{max(2 * k, 10)} of each for {k} niches (fewer blocks or a smaller buffer_um)."
            )

    truth = np.asarray(names, dtype=object)[np.argmax(np.nan_to_num(logits, nan=-np.inf), 1)]
    labelled = np.isfinite(logits).all(1)
    keep_obs = [teacher_key, library_key]
    keep_obsm = [
        SPATIAL_KEY,
        features_key,
        f"{features_key}_aug",
        f"{teacher_key}_logits",
        f"{teacher_key}_proba",
    ]
    keep_uns = [teacher_key, features_key, f"{features_key}_aug"]
    base = _slim_table(adata, keep_obs, keep_obsm, keep_uns)
    base.obsm[SPATIAL_KEY] = xy  # the working table is in microns, whatever the user's units
    base.uns["spatial"] = microns_record(libs)
    template, kwargs = fold_student(architecture, distill_kwargs)
    kwargs = {"progress": False, **kwargs}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rows = []
    for fold, lab in tqdm(fold_labels.items(), desc="cross-validation", disable=not progress):
        test = (lab == "test") & labelled
        work = base.copy()
        work.obs[_SPLIT] = pd.Categorical(lab.astype(str), categories=["train", "test", "buffer"])
        with warnings.catch_warnings():  # said once above, not per fold
            warnings.filterwarnings("ignore", message="The teacher .* was fitted on every cell")
            distill(work, model=template, teacher_key=teacher_key, features_key=features_key, split_key=_SPLIT,
                    random_state=random_state, key_added="_student", library_key=library_key, **kwargs)  # fmt: skip
        student = work.obs["_student"].astype(str).to_numpy()
        variants = [(m, False) for m in baselines]
        if neighbourhood_baselines:
            variants += [(m, True) for m in baselines if m != "teacher"]
        fitted = {}
        if not transductive_baselines:  # fitted on this fold's training cells, as the student
            for method, nbr in variants:
                histology_baseline(work, method=method, n_niches=k, features_key=features_key,
                                   neighbourhood=nbr, key_added="_baseline", library_key=library_key,
                                   split_key=_SPLIT, random_state=random_state)  # fmt: skip
                fitted[(method, nbr)] = work.obs["_baseline"].astype(str).to_numpy()
        # a fold of several sections (fold_key) is scored section by section
        scored = [(str(fold), test)] if fold_key is None else [
            (s, test & (libs == s)) for s in pd.unique(libs[test])
        ]  # fmt: skip
        for name, cells in scored:
            preds = {"student": student[cells]}
            held = base[cells].copy() if transductive_baselines else None
            for method, nbr in variants:
                bname = f"{method}_nbr" if nbr else method
                if held is None:
                    preds[bname] = fitted[(method, nbr)][cells]
                    continue
                histology_baseline(held, method=method, n_niches=k, features_key=features_key,
                                   neighbourhood=nbr, key_added="_baseline", library_key=library_key,
                                   split_key=None, random_state=random_state)  # fmt: skip
                preds[bname] = held.obs["_baseline"].astype(str).to_numpy()
            y = truth[cells]
            for method, pred in preds.items():
                rows.append({"fold": name, "method": method, "ari": adjusted_rand_score(y, pred),
                             "nmi": normalized_mutual_info_score(y, pred), "n_test": int(cells.sum())})  # fmt: skip
    return summarise(pd.DataFrame(rows))


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Add each method's ``margin`` over the best baseline per fold and ``mean`` / ``std`` rows over folds.

    Examples
    --------
    >>> df = pd.DataFrame({"fold": ["a", "a"], "method": ["student", "kmeans"], "ari": [0.5, 0.3],
    ...                    "nmi": [0.5, 0.4], "n_test": [10, 10]})
    >>> float(summarise(df).loc[("a", "student"), "margin"])
    0.2
    """
    df = scores.copy()
    is_base = df["method"] != "student"
    best = df[is_base].groupby("fold")["ari"].max()
    df["margin"] = df["ari"] - df["fold"].map(best)
    stats = df.groupby("method", sort=False)[["ari", "nmi", "margin", "n_test"]]
    summary = pd.concat({"mean": stats.mean(), "std": stats.std(ddof=1)}, names=["fold"]).reset_index()
    out = pd.concat([df, summary], ignore_index=True).set_index(["fold", "method"])
    return out[["ari", "nmi", "margin", "n_test"]]
