"""Distil teacher niches (from transcriptomics) into a student that sees only H&E features."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.feature_record import resolve_features_key
from .._core.keys import LIBRARY_KEY, TABLE_KEY
from .._core.neighbors import DEFAULT_N_NEIGHBORS, default_max_neighbors, estimate_radius
from .._core.predictions import prediction_targets, write_niche_predictions
from .._core.records import claim, store_params, teacher_record
from .._core.runtime import check_device
from .._core.spatial import micron_coords
from .._core.table import get_table, library_labels
from ..models.student import NicheStudent
from ..pp._augment import views_of
from ..pp._split import check_split_guards, check_split_label, split_groups, split_record

# hard-label teachers: one-hot targets are smoothed so that log-probabilities stay finite
LABEL_SMOOTHING = 0.1


def teacher_targets(adata: ad.AnnData, teacher_key: str) -> tuple[np.ndarray, list[str], str]:
    """Teacher logits ``(N, K)``, the niche names and where they came from.

    ``obsm[f"{teacher_key}_logits"]`` if present, else the log of ``obsm[f"{teacher_key}_proba"]``, else
    smoothed one-hot labels of ``obs[teacher_key]``.
    """
    if teacher_key not in adata.obs:
        raise KeyError(
            f"No teacher niches in obs[{teacher_key!r}]; run nk.tl.teacher_niches(sdata, n_niches=...) first "
            "or pass teacher_key= naming a column of niche labels."
        )
    labels = adata.obs[teacher_key]
    if not isinstance(labels.dtype, pd.CategoricalDtype):
        labels = labels.astype("category")
    names = [str(c) for c in labels.cat.categories]
    k = len(names)
    if k < 2:
        raise ValueError(f"obs[{teacher_key!r}] has {k} niche(s); distillation needs at least 2.")
    for suffix, transform in (("_logits", None), ("_proba", "log")):
        key = f"{teacher_key}{suffix}"
        if key in adata.obsm:
            arr = np.asarray(adata.obsm[key], dtype=np.float64)
            if arr.shape != (adata.n_obs, k):
                raise ValueError(
                    f"obsm[{key!r}] has shape {arr.shape} but obs[{teacher_key!r}] has {k} niches "
                    f"({adata.n_obs} cells); they must come from the same teacher run."
                )
            _check_fresh(arr, labels, key, teacher_key)
            if transform == "log":
                arr = np.log(np.clip(arr, 1e-8, None))
            return arr.astype(np.float32), names, key
    codes = np.asarray(labels.cat.codes)
    onehot = np.full((adata.n_obs, k), LABEL_SMOOTHING / k)
    valid = codes >= 0
    onehot[np.flatnonzero(valid), codes[valid]] += 1.0 - LABEL_SMOOTHING
    onehot[~valid] = np.nan  # unlabelled cells cannot be trained on
    return np.log(onehot).astype(np.float32), names, f"obs[{teacher_key!r}] (one-hot)"


def _check_fresh(arr: np.ndarray, labels: pd.Series, key: str, teacher_key: str) -> None:
    """Refuse logits/probabilities whose argmax disagrees with the labels they belong to (stale arrays)."""
    codes = np.asarray(labels.cat.codes)
    ok = (codes >= 0) & np.isfinite(arr).all(1)
    if not ok.any():
        return
    a, c = arr[ok], codes[ok]
    # ties are not disagreements: the label's value must equal the row maximum
    at_label = a[np.arange(len(a)), c]
    stale = at_label < a.max(1) - 1e-6 * np.maximum(np.abs(a.max(1)), 1.0)
    if stale.any():
        raise ValueError(
            f"obsm[{key!r}] disagrees with obs[{teacher_key!r}] on {int(stale.sum())} of {int(ok.sum())} cells "
            "(its argmax is another niche): the labels were changed after the teacher ran, so the array is stale. "
            f"Delete obsm[{key!r}] to train on the labels, or re-run nk.tl.teacher_niches."
        )


def validation_band(
    xy: np.ndarray, candidates: np.ndarray, libraries: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """A spatially coherent validation set: per section, a band in ``x`` holding ``fraction`` of the cells.

    Random cells would leak (their neighbours train); a contiguous band keeps validation honest.
    """
    val = np.zeros(len(xy), bool)
    if fraction <= 0:
        return val
    for lib in np.unique(libraries[candidates]):
        sel = candidates[libraries[candidates] == lib]
        n_val = int(round(fraction * len(sel)))
        if n_val < 1 or n_val >= len(sel):
            continue
        order = sel[np.argsort(xy[sel, 0], kind="stable")]
        start = int(rng.integers(0, len(sel) - n_val + 1))
        val[order[start : start + n_val]] = True
    return val


def validation_blocks(
    xy: np.ndarray,
    candidates: np.ndarray,
    libraries: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    n_blocks: int = 4,
) -> np.ndarray:
    """Validation cells as about ``n_blocks`` square blocks per section, spread at random over it.

    One contiguous band samples one part of the tissue (and can miss a niche); several blocks see more of
    its variety while staying spatially coherent (random cells would leak: their neighbours train).
    ``n_blocks=1`` is :func:`validation_band`.
    """
    if n_blocks <= 1:
        return validation_band(xy, candidates, libraries, fraction, rng)
    val = np.zeros(len(xy), bool)
    if fraction <= 0:
        return val
    side = max(int(round(np.sqrt(n_blocks / fraction))), 2)  # a side x side grid: n_blocks tiles ~ fraction
    for lib in np.unique(libraries[candidates]):
        sel = candidates[libraries[candidates] == lib]
        target = fraction * len(sel)
        if int(round(target)) < 1 or int(round(target)) >= len(sel):
            continue
        # tiles of equal cell counts along x, then along y within each column: blocks follow the tissue
        col = np.empty(len(sel), np.int64)
        col[np.argsort(xy[sel, 0], kind="stable")] = np.arange(len(sel)) * side // len(sel)
        tile = np.empty(len(sel), np.int64)
        for c in range(side):
            in_col = np.flatnonzero(col == c)
            order = in_col[np.argsort(xy[sel[in_col], 1], kind="stable")]
            tile[order] = c * side + np.arange(len(order)) * side // max(len(order), 1)
        taken = 0
        for t in rng.permutation(side * side):
            members = sel[tile == t]
            if taken + len(members) > 1.25 * target:
                continue
            val[members] = True
            taken += len(members)
            if taken >= 0.8 * target:
                break
    return val


def student_settings(model: Any, settings: Mapping[str, Any]) -> NicheStudent:
    """The unfitted student ``distill`` trains: ``model`` (an unfitted NicheStudent, a dict of its arguments or
    None) with the deprecated keyword settings of ``distill`` applied; the caller's object is never modified."""
    if model is None:
        model = {}
    if isinstance(model, Mapping):
        model = NicheStudent(**dict(model))
    elif not isinstance(model, NicheStudent):
        raise TypeError(
            f"model must be an unfitted nk.models.NicheStudent or a dict of its arguments, got "
            f"{type(model).__name__}."
        )
    elif model.is_fitted:
        raise ValueError(
            "model is already fitted; distill trains a new student from its settings: pass an unfitted "
            "NicheStudent(...) (or nk.tl.predict_niches to apply a fitted one)."
        )
    model = copy.deepcopy(model)
    if settings:
        allowed = NicheStudent.settings()
        unknown = sorted(set(settings) - allowed)
        if unknown:
            raise TypeError(f"distill() got unexpected keyword arguments {unknown}.")
        warnings.warn(
            f"distill({', '.join(f'{k}=' for k in settings)}) is deprecated: the student's settings belong to the "
            f"model, pass model=nk.models.NicheStudent({', '.join(f'{k}=...' for k in settings)}).",
            FutureWarning,
            stacklevel=3,
        )
        merged = {**model.get_params(), **settings}
        model = NicheStudent(**merged)
    return model


def _student_for(template: NicheStudent, names: list[str], teacher_params: Mapping[str, Any]) -> NicheStudent:
    """The student to fit on this teacher: ``K`` and names from the teacher, the teacher's radius and neighbour
    target where the template leaves them unset."""
    if template.n_niches is not None and template.n_niches != len(names):
        raise ValueError(
            f"model has n_niches={template.n_niches} but the teacher has {len(names)} niches ({names[:10]}); "
            "leave n_niches unset, distill takes the teacher's."
        )
    arguments = template.get_params()
    arguments.update(n_niches=len(names), niche_names=names)
    if template.n_neighbors_target is None:
        arguments["n_neighbors_target"] = float(teacher_params.get("n_neighbors_target", DEFAULT_N_NEIGHBORS))
    if template.radius_um is None and teacher_params.get("radius_um") is not None:
        arguments["radius_um"] = float(teacher_params["radius_um"])
    if template.max_neighbors is None:
        arguments["max_neighbors"] = default_max_neighbors(arguments["n_neighbors_target"])
    return NicheStudent(**arguments)


@inject_docs
def distill(
    sdata,
    *,
    model: NicheStudent | Mapping[str, Any] | None = None,
    teacher_key: str = "teacher_niche",
    features_key: str | None = None,
    split_key: str | None = "split",
    augmented_key: str | None = "auto",
    device: str = "auto",
    random_state: int = 0,
    key_added: str = "student_niche",
    library_key: str = LIBRARY_KEY,
    table_key: str = TABLE_KEY,
    progress: bool = True,
    overwrite: bool = False,
    **settings: Any,
) -> NicheStudent:
    """Train a student on H&E features to reproduce the teacher's niches, and predict every cell.

    The loss is ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``. Neighbourhoods follow the
    teacher's rule (its radius when recorded) and never cross a section or a split label.

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` in the standard layout, or its table.
    model
        The student to train: an unfitted :class:`~nichekd.models.NicheStudent` (its settings: architecture,
        temperature, network sizes, ``n_components``, training and validation; it is not modified) or a dict of
        its arguments. Default ``NicheStudent()``: a transformer over neighbourhood tokens, ``T = 2``. Settings
        it leaves unset come from the data: ``K`` and the niche names from the teacher, the radius from the
        teacher's record (``uns[teacher_key]['params']['radius_um']``), else estimated on the training cells for
        ``n_neighbors_target`` neighbours (the teacher's, else 10).
    teacher_key
        %(teacher_key)s
    features_key
        ``obsm`` key of the histology features (``nk.pp.histology_features``); default the only such key.
    split_key
        %(split_key)s
    augmented_key
        ``obsm`` key of augmented views of the features (``nk.pp.augmented_features``): each epoch every cell
        draws one version (original or a view). ``"auto"``: ``f"{features_key}_aug"`` when present; ``None``:
        no augmentation.
    device
        %(device)s
    random_state
        %(random_state)s
    key_added
        Writes ``obs[key_added]`` (the teacher's niche names), ``obsm[f"{key_added}_proba"]``,
        ``obs[f"{key_added}_entropy"]`` and ``uns[key_added]`` (params and per-epoch losses).
    library_key
        %(library_key)s
    table_key
        %(table_key)s
    progress
        %(progress)s
    overwrite
        %(overwrite)s
        Re-running distill on its own ``key_added`` replaces the earlier student's predictions and record.
    **settings
        Deprecated: the student's settings (``architecture=``, ``epochs=``, ...) belong to ``model``; given
        here they still work, with a FutureWarning naming ``model=NicheStudent(...)``.

    Returns
    -------
    The fitted :class:`~nichekd.models.NicheStudent` (save it with ``.save(path)``).

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.synthetic_tissue(n_cells=5000, random_state=0)
    >>> nk.tl.teacher_niches(sdata, n_niches=6)
    >>> nk.pp.histology_features(sdata, key_added="he_features")
    >>> nk.pp.spatial_split(sdata)
    >>> model = nk.tl.distill(sdata, model=nk.models.NicheStudent(architecture="mlp"))
    """
    template = student_settings(model, settings)
    _val.check_seed("random_state", random_state)
    check_device(device)
    _val.check_key("teacher_key", teacher_key)
    for name, value in (
        ("features_key", features_key),
        ("split_key", split_key),
        ("augmented_key", augmented_key),
    ):
        _val.check_key(name, value, optional=True)
    adata = get_table(sdata, table_key)
    written = claim(adata, prediction_targets(key_added), writer="distill", overwrite=overwrite)
    logits, names, source = teacher_targets(adata, teacher_key)
    features_key = resolve_features_key(adata, features_key)
    if features_key not in adata.obsm:
        raise KeyError(
            f"No histology features in obsm[{features_key!r}]; run nk.pp.histology_features(sdata, "
            f"key_added={features_key!r}) first. obsm has {sorted(adata.obsm.keys())}."
        )
    feats = np.asarray(adata.obsm[features_key])
    if feats.ndim != 2 or len(feats) != adata.n_obs:
        raise ValueError(f"obsm[{features_key!r}] must be (n_cells, n_features), got {feats.shape}.")
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    bad = ~np.isfinite(feats).all(1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} cells have NaN or infinite features in obsm[{features_key!r}] (e.g. cells off "
            "the image); subset the table to cells with features or recompute them."
        )
    views = None
    if augmented_key is not None:
        key = f"{features_key}_aug" if augmented_key == "auto" else augmented_key
        if augmented_key != "auto" and key not in adata.obsm:
            raise KeyError(
                f"No augmented views in obsm[{key!r}]; run nk.pp.augmented_features(sdata, "
                f"features_key={features_key!r}) first or pass augmented_key=None."
            )
        views = views_of(adata, features_key, key)
    if template.tta and views is None:
        raise ValueError(
            "tta=True needs augmented views of the features: run nk.pp.augmented_features(sdata, "
            f"features_key={features_key!r}) first."
        )
    xy = micron_coords(sdata, table_key=table_key, library_key=library_key)
    libs = np.asarray(library_labels(adata, library_key)).astype(str)
    if split_key is None:
        split = np.full(adata.n_obs, "train", dtype=object)
    else:
        if split_key not in adata.obs:
            raise KeyError(
                f"No split in obs[{split_key!r}]; run nk.pp.spatial_split(sdata) first or pass split_key=None "
                "to train on every cell."
            )
        check_split_label(adata, split_key, "train", use="distill trains on")
        split = adata.obs[split_key].astype(str).to_numpy()
        check_split_guards(adata, split_key, teacher_key=teacher_key, features_key=features_key)
    labelled = np.isfinite(logits).all(1)
    trainable = (split == "train") & labelled
    teacher_params = adata.uns.get(teacher_key, {}).get("params", {}) if teacher_key in adata.uns else {}
    target = template.n_neighbors_target  # as _student_for resolves it
    if target is None:
        target = float(teacher_params.get("n_neighbors_target", DEFAULT_N_NEIGHBORS))
    train_libs, train_sizes = np.unique(libs[trainable], return_counts=True)
    # before any neighbour list is sized (the default width is twice the target) or allocated
    _val.check_neighbour_target(
        target, dict(zip(train_libs.tolist(), train_sizes.tolist(), strict=True)), unit="training cells"
    )
    model = _student_for(template, names, teacher_params)
    n_neighbors_target = model.n_neighbors_target
    min_cells = max(2 * len(names), 10)
    if trainable.sum() < min_cells:
        raise ValueError(
            f"Only {int(trainable.sum())} labelled training cells (obs[{split_key!r}] == 'train'); need at "
            f"least {min_cells} for {len(names)} niches."
        )
    if model.radius_um is None:  # per section, on the training cells (the student's own rule would pool them)
        model.radius_um = estimate_radius(
            xy[trainable], n_neighbors_target, groups=libs[trainable], random_state=random_state
        )
    val_fraction = model.val_fraction
    val = validation_blocks(
        xy,
        np.flatnonzero(trainable),
        libs,
        val_fraction,
        np.random.default_rng(random_state),
        model.val_blocks,
    )
    if val_fraction > 0 and not val.any():
        warnings.warn(
            f"val_fraction={val_fraction} leaves no validation cell (too few training cells per section): "
            "training runs all epochs without early stopping.",
            UserWarning,
            stacklevel=2,
        )
    train = trainable & ~val
    # neighbourhoods stay inside one section and one split part (validation is its own part)
    part = np.where(val, "val", split)
    groups = split_groups(libs, part)

    model.encoder = (
        dict(adata.uns.get(features_key, {}).get("params", {})) if features_key in adata.uns else {}
    )
    model.features_key = features_key
    fit_logits = np.where(labelled[:, None], logits, 0.0).astype(np.float32)
    model.fit(
        feats, fit_logits, xy, groups=groups, train_mask=train, val_mask=val, views=views, device=device,
        random_state=random_state, progress=progress,
    )  # fmt: skip
    # the stored answer is predict_niches' answer: neighbourhoods within (section, split part), the validation
    # band back in its part (it was a part of its own only to keep the validation loss honest)
    model.split_key = split_key
    proba = model.predict_proba(
        feats, xy, groups=split_groups(libs, split), views=views if model.tta else None, device=device
    )

    # which teacher run the student learned from, and the split it trained with (evaluate warns when either
    # changes after this)
    learned_from = teacher_record(adata, teacher_key)
    # the model carries which teacher it learned from: its predictions anywhere are checked against it
    model.teacher_record = {"teacher_key": teacher_key, **learned_from}
    trained_with = split_record(adata, split_key)
    model.split_record = dict(trained_with)  # predict_niches records it (in memory only: not saved)
    # everything validated and computed: write
    write_niche_predictions(adata, key_added, proba, names)
    params = {
        "teacher_key": teacher_key,
        "teacher_source": source,
        "features_key": features_key,
        "split_key": split_key,
        "temperature": model.temperature,
        "architecture": model.architecture,
        "radius_um": float(model.radius_um),
        "n_neighbors_target": float(n_neighbors_target),
        "max_neighbors": int(model.max_neighbors),
        "epochs": model.epochs,
        "batch_size": model.batch_size,
        "lr": model.lr,
        "val_fraction": model.val_fraction,
        "patience": model.patience,
        "min_epochs": model.min_epochs,
        "val_blocks": model.val_blocks,
        "context_scales": list(model.context_scales),
        "n_members": int(model.n_members),
        "d_model": model.d_model,
        "n_layers": model.n_layers,
        "n_components": model.n_components,
        "dropout": model.dropout,
        "weight_decay": model.weight_decay,
        "augmented_key": None
        if views is None
        else (f"{features_key}_aug" if augmented_key == "auto" else augmented_key),
        "n_views": 0 if views is None else int(views.shape[1]),
        "tta": model.tta,
        "random_state": random_state,
        "niche_names": names,
        **learned_from,
        **trained_with,
    }
    history = {
        "train_loss": np.asarray(model.history["train_loss"], dtype=float),
        "val_loss": np.asarray(model.history["val_loss"], dtype=float),
        "best_epoch": -1 if model.best_epoch is None else int(model.best_epoch),
        "n_train": int(train.sum()),
        "n_val": int(val.sum()),
        "batch_size_used": int(model.batch_size_used),
    }
    store_params(adata, key_added, params, claim=written, history=history)
    return model
