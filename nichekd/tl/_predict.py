"""Predict niches on H&E-only slides with a distilled student."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.feature_record import FEATURE_SETTINGS, IMPLIED_SETTINGS, same_setting
from .._core.keys import LIBRARY_KEY, REGION_KEY, TABLE_KEY, shapes_name
from .._core.predictions import check_niche_write, prediction_targets, write_niche_predictions
from .._core.records import claim, read_params, store_run
from .._core.runtime import check_device
from .._core.spatial import resolve
from .._core.table import get_table, library_labels, spatial_coords
from ..io._build import build_library
from ..models.student import NicheStudent
from ..pp._split import split_groups

# recorded per dataset: never replayed onto another slide
DATASET_KEYS = {"versions", "date", "key_added", "table_key", "image_key", "shapes_key", "library_key", "copy",
                "overwrite", "mpp_used", "pyramid_level", "pixel_rule", "device_used"}  # fmt: skip
# below this share of the training neighbour count, predict_niches warns: the student sees too few neighbours
NEIGHBOUR_WARN_RATIO = 0.5
_MISSING = object()


def encoder_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The entries of a ``histology_features`` params record that determine the features (None included)."""
    params = read_params(params)
    return {k: params[k] for k in FEATURE_SETTINGS if k in params}


def check_encoder(
    model: NicheStudent, params: dict[str, Any] | None, features_key: str, *, trust_features: bool = False
) -> None:
    """Raise if features were computed with other encoder settings than the model's, or without a record.

    Every setting of ``FEATURE_SETTINGS`` is compared, None included (records of older versions drop None
    settings: a setting missing from a record is taken as None, except those a registered backbone implies).
    """
    if not params or not model.encoder:
        if trust_features:
            return
        whose = "the feature set" if not params else "the model"
        raise ValueError(
            f"Cannot check obsm[{features_key!r}] against the model: {whose} carries no histology_features record "
            f"(uns[{features_key!r}]['params'] / model.encoder). Delete obsm[{features_key!r}] so that "
            "predict_niches recomputes it with the model's settings, or pass trust_features=True if you vouch "
            "that it was computed exactly as for training."
        )
    mine, theirs = read_params(model.encoder), read_params(params)
    diff = []
    for k in FEATURE_SETTINGS:
        a, b = mine.get(k, _MISSING), theirs.get(k, _MISSING)
        if (a is _MISSING or b is _MISSING) and (k in IMPLIED_SETTINGS or (a is _MISSING and b is _MISSING)):
            continue
        a, b = (None if x is _MISSING else x for x in (a, b))
        if not same_setting(a, b):
            diff.append((k, a, b))
    if diff:
        detail = ", ".join(f"{k}: model {_short(a)} vs data {_short(b)}" for k, a, b in diff)
        raise ValueError(
            f"obsm[{features_key!r}] was computed with other encoder settings than the model ({detail}). "
            f"Delete obsm[{features_key!r}] so that predict_niches recomputes it with the model's settings."
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def features_record(adata: ad.AnnData, features_key: str) -> dict[str, Any]:
    """The ``histology_features`` params record of ``obsm[features_key]`` (empty if there is none)."""
    entry = adata.uns.get(features_key)
    return dict(entry.get("params", {})) if isinstance(entry, Mapping) else {}


def check_prediction_args(batch_size: Any, tile_size_um: Any = None, grid: str = "hex") -> None:
    """Numeric options of the prediction functions, checked before anything is read."""
    _val.check_int("batch_size", batch_size)
    if tile_size_um is not None:
        _val.check_positive("tile_size_um", tile_size_um, unit="microns")
    _val.check_choice("grid", grid, ("hex", "square"))


def mean_neighbours(model: NicheStudent, xy: np.ndarray, groups: np.ndarray) -> float:
    """Mean neighbour count the student sees for cells at ``xy`` (its radius and cap, within groups)."""
    if len(xy) == 0:
        return 0.0
    return float(model.neighbourhoods(xy, groups).counts().mean())


def warn_sparse_neighbours(model: NicheStudent, count: float, where: str) -> None:
    """Warn when the student sees far fewer neighbours than in training (its maps get worse)."""
    trained = model.train_mean_neighbors
    if trained is not None and trained > 0 and count < NEIGHBOUR_WARN_RATIO * trained:
        warnings.warn(
            f"{where}: the student sees {count:.1f} neighbours per cell within its radius "
            f"({model.radius_um:.4g} um), far below the {trained:.1f} it was trained with; predictions lose "
            "their spatial context. On an H&E-only slide leave tile_size_um=None (spacing matched to training).",
            UserWarning,
            stacklevel=3,
        )


# candidate tile spacings tried around the analytic start (x 2^-1 ... x 2^1), and query tiles per candidate
_SPACING_STEPS = np.geomspace(0.5, 2.0, 25)
_SPACING_SAMPLE = 20_000


def _sampled_mean_count(xy: np.ndarray, radius: float, cap: int, rng: np.random.Generator) -> float:
    """Mean neighbour count (capped at ``cap``, the tile itself excluded) over up to 20k query tiles."""
    from scipy.spatial import cKDTree

    query = xy if len(xy) <= _SPACING_SAMPLE else xy[rng.choice(len(xy), _SPACING_SAMPLE, replace=False)]
    counts = cKDTree(xy).query_ball_point(query, radius * (1 + 1e-9), return_length=True) - 1
    return float(np.minimum(counts, cap).mean())


def matched_tile_spacing(model: NicheStudent, tiles_at, grid: str) -> float:
    """Tile spacing (microns) whose mean neighbour count on this tissue best matches the training one.

    ``tiles_at(spacing)`` returns the tile centres for a spacing. The start is the spacing of an infinite grid
    with ``train_mean_neighbors + 1`` tiles per disc of the model's radius; since on a lattice the count is a
    step function of the spacing (whole shells of neighbours enter the radius) and tissue borders lower it,
    25 spacings from half to twice the start are measured on the real tissue and the closest kept (the
    largest spacing among ties: fewer tiles).
    """
    target, r = float(model.train_mean_neighbors), model.radius_um
    cell_area = np.sqrt(3) / 2 if grid == "hex" else 1.0  # area per tile in units of spacing^2
    start = r * np.sqrt(np.pi / (cell_area * (target + 1.0)))
    rng = np.random.default_rng(0)
    best = (np.inf, -start)
    for spacing in start * _SPACING_STEPS:
        xy = tiles_at(spacing)
        if len(xy) < 2:
            continue
        err = abs(_sampled_mean_count(xy, r, model.max_neighbors, rng) - target) / target
        best = min(best, (round(err, 6), -spacing))
    return float(-best[1])


def _image_and_library(sdata, image_key: str | None, library: str | None) -> tuple[str, str]:
    from ..pp._tissue import _resolve_image

    return _resolve_image(sdata, image_key, library)


def _tile_table(
    sdata,
    model: NicheStudent,
    image_key: str | None,
    library: str | None,
    tile_size_um: float | None,
    grid: str,
) -> tuple[ad.AnnData, Any, tuple[str, Any], float]:
    """Detect tissue, tile it and return the tiles' table, their shapes, the mask and the spacing used
    (nothing is written)."""
    from spatialdata import SpatialData

    from ..pp import tissue_mask, tissue_tiles

    image_key, library = _image_and_library(sdata, image_key, library)
    mask_key = f"{library}_tissue"
    mask = (
        sdata.shapes[mask_key]
        if mask_key in sdata.shapes
        else tissue_mask(sdata, image_key=image_key, library=library, copy=True)
    )
    # tile on a lightweight object so that a failure leaves the user's object untouched
    work = SpatialData(images={image_key: sdata.images[image_key]}, shapes={mask_key: mask})

    def tiles_at(spacing: float) -> np.ndarray:
        return tissue_tiles(
            work,
            tile_size_um=float(spacing),
            image_key=image_key,
            library=library,
            mask_key=mask_key,
            grid=grid,
        )

    if tile_size_um is None:
        if model.train_mean_neighbors:  # reproduce the neighbour count the student was trained with
            tile_size_um = matched_tile_spacing(model, tiles_at, grid)
        else:  # models saved before this was recorded: one tile per patch
            tile_size_um = model.encoder.get("patch_size_um")
            if tile_size_um is None:
                raise ValueError("The model records no patch size; pass tile_size_um= (microns).")
    xy = tiles_at(float(tile_size_um))
    if len(xy) == 0:
        raise ValueError(
            f"No tile of {tile_size_um} um fits the tissue detected on {image_key!r}: nothing to predict. "
            "Pass a smaller tile_size_um= or cells/spots in a table."
        )
    tiles = ad.AnnData(np.zeros((len(xy), 0), dtype=np.float32))
    tiles.obs_names = [f"{library}_tile{i}" for i in range(len(xy))]
    tiles_sd = build_library(
        tiles, library=library, xy_um=xy, diameter_um=float(tile_size_um), kind="tile", technology="he_only"
    )
    table = tiles_sd.tables[TABLE_KEY]
    new_mask = None if mask_key in sdata.shapes else mask
    return table, tiles_sd.shapes[shapes_name(library, "tile")], (mask_key, new_mask), float(tile_size_um)


@inject_docs
def predict_niches(
    sdata,
    model: NicheStudent | str | Path,
    *,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str = TABLE_KEY,
    tile_size_um: float | None = None,
    grid: str = "hex",
    library: str | None = None,
    library_key: str = LIBRARY_KEY,
    key_added: str = "student_niche",
    batch_size: int = 2048,
    device: str = "auto",
    tta: bool = False,
    overwrite: bool = False,
    trust_features: bool = False,
) -> None:
    """Predict niches from histology alone, on any SpatialData with an H&E image.

    With cells or spots in ``sdata[table_key]`` their niches are predicted. Without a table, tissue is
    detected (:func:`nichekd.pp.tissue_mask`) and tiled on a grid; a ``{library}_tiles`` shapes element and a
    table annotating it are added. Features are computed with the model's own encoder settings (its recorded
    ``histology_features`` parameters), or reused when already present with the same settings: every setting
    is compared (None included), the stain reference too.

    Neighbourhoods never cross a section and, on an object that carries the split column the model was
    trained with (``obs['split']``), never a split part either, as in :func:`nichekd.tl.distill`: on the
    object it was trained on, ``predict_niches`` gives the labels ``distill`` stored.

    Only the predicted rows are written: other rows of ``obs[key_added]`` keep what they hold (e.g. a loop over
    libraries keeps every library), and rows that already hold a prediction are refused unless
    ``overwrite=True``. Each call adds its record to ``uns[key_added]['runs']``; ``uns[key_added]['params']``
    stays the record of the key's first writer (e.g. ``distill``).

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` with an H&E image (no transcriptomics needed).
    model
        A fitted :class:`~nichekd.models.NicheStudent` or the folder it was saved to.
    image_key
        The H&E image (default: the library's).
    shapes_key
        Predict only the table rows annotating this shapes element (default: all rows).
    table_key
        %(table_key)s
    tile_size_um
        Tile spacing in microns when tiling. Default: the spacing at which the tiles' mean neighbour count
        within the model's radius matches the count the student was trained with (models saved before that was
        recorded: the patch size).
    grid
        ``"hex"`` or ``"square"`` tiling.
    library
        Predict one library only (default: all).
    library_key
        %(library_key)s
    key_added
        Writes ``obs[key_added]`` (the teacher's niche names), ``obsm[f"{key_added}_proba"]``,
        ``obs[f"{key_added}_entropy"]`` (uncertainty) and a run record in ``uns[key_added]['runs']``.
    batch_size
        Cells per forward pass.
    device
        %(device)s
    tta
        Test-time augmentation as ``distill(tta=True)``: average the probabilities over the original and the
        augmented views, ``obsm[f"{features_key}_aug"]`` (computed with :func:`nichekd.pp.augmented_features`
        when absent).
    overwrite
        %(overwrite)s
        Re-running ``predict_niches`` on its own ``key_added`` replaces the rows this call predicts (the
        other rows are kept); predictions of ``distill`` under the same key need ``overwrite=True``.
    trust_features
        Accept ``obsm[features_key]`` without a ``histology_features`` record to compare with the model's: you
        vouch that it was computed exactly as for training.

    Warns
    -----
    UserWarning
        When the predicted cells see fewer than half the neighbours (within the model's radius) that the
        student saw in training.

    Examples
    --------
    >>> import nichekd as nk
    >>> model = nk.models.NicheStudent.load("student_model")  # doctest: +SKIP
    >>> he = nk.io.read_wsi("slide.svs")  # doctest: +SKIP
    >>> nk.tl.predict_niches(he, model)  # doctest: +SKIP
    >>> he.tables["table"].obs["student_niche"].value_counts()  # doctest: +SKIP
    """
    check_prediction_args(batch_size, tile_size_um, grid)
    check_device(device)
    for name, value in (("image_key", image_key), ("shapes_key", shapes_key), ("library", library)):
        _val.check_key(name, value, optional=True)
    if not isinstance(model, NicheStudent):
        if not isinstance(model, str | os.PathLike):
            raise TypeError(
                f"model must be a fitted nk.models.NicheStudent or the folder a saved one is in, got {model!r} "
                f"({type(model).__name__})."
            )
        model = NicheStudent.load(model)
    if not model.is_fitted:
        raise ValueError("The model is not fitted; train it with nk.tl.distill or load a saved one.")
    features_key = model.features_key or "he_features"
    new_tiles, new_mask, feat_params, aug_params = None, (None, None), None, None
    if isinstance(sdata, ad.AnnData) or getattr(sdata, "tables", None):
        # a table's observations (spots, cells, Visium HD bins) are predicted, found as every function finds
        # them; only an object without any table is tiled
        adata = get_table(sdata, table_key)
    else:
        adata, new_tiles, new_mask, tile_size_um = _tile_table(
            sdata, model, image_key, library, tile_size_um, grid
        )

    rows = np.ones(adata.n_obs, bool)
    if shapes_key is not None:
        if REGION_KEY not in adata.obs or shapes_key not in set(adata.obs[REGION_KEY].astype(str)):
            raise KeyError(f"No table rows annotate shapes {shapes_key!r}.")
        rows &= (adata.obs[REGION_KEY].astype(str) == shapes_key).to_numpy()
    libs = np.asarray(library_labels(adata, library_key)).astype(str)
    if library is not None:
        if library not in set(libs):
            raise KeyError(f"No library {library!r}; the table has {sorted(set(libs))}.")
        rows &= libs == library
    sel = np.flatnonzero(rows)
    if len(sel) == 0:
        raise ValueError("No observation to predict (shapes_key= / library= select none).")
    # every key this call writes, checked before any work: a re-run replaces its own predictions (the other
    # rows are kept), another function's or the user's only with overwrite=True
    written = claim(adata, prediction_targets(key_added), writer="predict_niches", overwrite=overwrite)
    check_niche_write(adata, key_added, model.niche_names, sel, overwrite=True)  # other rows: same niches
    claims = []
    if new_tiles is not None:  # new elements: the tiles, their table and a tissue mask
        tiles_key = [("shapes", shapes_name(str(libs[0]), "tile")), ("tables", table_key)]
        claims.append(claim(sdata, tiles_key, writer="predict_niches", overwrite=overwrite))
        if new_mask[1] is not None:
            claims.append(claim(sdata, [("shapes", new_mask[0])], writer="tissue_mask", overwrite=overwrite))
    # tiles are built in microns; an existing table's coordinates are read from its elements
    xy = (
        spatial_coords(adata)
        if new_tiles is not None
        else resolve(sdata, table_key=table_key, library_key=library_key).xy_um
    )

    # features: reuse only when made with the model's settings, else replay its encoder
    target, table_claims = None, []
    if features_key in adata.obsm:
        check_encoder(
            model, features_record(adata, features_key), features_key, trust_features=trust_features
        )
        feats = np.asarray(adata.obsm[features_key])
    else:
        if not encoder_settings(model.encoder):
            raise ValueError(
                f"No obsm[{features_key!r}] and the model records no encoder settings to recompute them; "
                "compute the features as for training and store them there."
            )
        from ..pp import histology_features

        new_keys = [("obsm", features_key), ("uns", features_key)]
        table_claims = [claim(adata, new_keys, writer="histology_features", overwrite=overwrite)]
        target = sdata if new_tiles is None else _with_tiles(sdata, adata, new_tiles, table_key)
        replay = {
            **_replay(model.encoder, features_key, table_key),
            **({"overwrite": True} if overwrite else {}),
        }
        work_table = histology_features(target, **replay, copy=True)
        feats = np.asarray(work_table.obsm[features_key])
        feat_params = work_table.uns.get(features_key)
    if feats.ndim != 2 or feats.shape[1] != model.n_features:
        raise ValueError(
            f"The model expects {model.n_features} features per cell, obsm[{features_key!r}] has "
            f"{feats.shape[1] if feats.ndim == 2 else feats.shape}; the encoder does not match the model."
        )
    if not np.isfinite(feats[sel]).all():
        raise ValueError(f"Some cells have NaN features in obsm[{features_key!r}] (e.g. off the image).")
    views, aug_key = None, f"{features_key}_aug"
    if tta:
        views, aug_params = _tta_views(sdata, adata, target, feats, feat_params, features_key, table_key)
        if aug_params is not None and aug_key not in adata.obsm:
            new_keys = [("obsm", aug_key), ("uns", aug_key)]
            table_claims.append(claim(adata, new_keys, writer="augmented_features", overwrite=overwrite))
    # on an object that carries the model's split (the one it was trained on), neighbourhoods stay within
    # each split part as in distill, so both give the same answer; elsewhere within each section
    split_key = getattr(model, "split_key", None)
    split = adata.obs[split_key].astype(str).to_numpy() if split_key and split_key in adata.obs else None
    groups = split_groups(libs, split)
    warn_sparse_neighbours(model, mean_neighbours(model, xy[sel], groups[sel]), "predict_niches")
    proba_sel = model.predict_proba(
        feats[sel],
        xy[sel],
        groups=groups[sel],
        views=None if views is None else views[sel],
        batch_size=batch_size,
        device=device,
    )

    # everything computed: write
    if new_tiles is not None:
        lib = str(libs[0])
        if new_mask[1] is not None:
            sdata.shapes[new_mask[0]] = new_mask[1]
        sdata.shapes[shapes_name(lib, "tile")] = new_tiles
        sdata.tables[table_key] = adata
        for c in claims:
            c.record(sdata)
    if features_key not in adata.obsm:
        adata.obsm[features_key] = feats
        if feat_params is not None:
            adata.uns[features_key] = feat_params
    if aug_params is not None and aug_key not in adata.obsm:
        adata.obsm[aug_key] = views.reshape(len(views), -1)
        adata.uns[aug_key] = aug_params
    for c in table_claims:
        c.record(adata)
    write_niche_predictions(adata, key_added, proba_sel, model.niche_names, rows=sel, overwrite=True)
    store_run(
        adata,
        key_added,
        {
            "function": "predict_niches",
            "model": repr(model),
            "niche_names": model.niche_names,
            # the teacher the model learned from (teacher_key, run, label checksum): evaluate warns when today's
            # teacher on this object is another one
            **dict(model.teacher_record or {}),
            "radius_um": model.radius_um,
            "features_key": features_key,
            "split_key": split_key if split is not None else None,
            # the split the model was trained with (distill's model, in memory), for evaluate's stale-split check
            **(dict(getattr(model, "split_record", None) or {}) if split is not None else {}),
            "tiled": new_tiles is not None,
            "tile_size_um": tile_size_um,
            "grid": grid if new_tiles is not None else None,
            "library": library,
            "shapes_key": shapes_key,
            "n_predicted": len(sel),
            "mean_neighbours": mean_neighbours(model, xy[sel], libs[sel]),
            "train_mean_neighbors": model.train_mean_neighbors,
            "tta": tta,
            "overwrite": overwrite,
            "trust_features": trust_features,
        },
        claim=written,
    )


def _tta_views(sdata, adata, target, feats, feat_params, features_key, table_key):
    """``(n, V, d)`` augmented views for test-time augmentation: the stored ones, else computed."""
    from ..pp._augment import augmented_features, views_of

    if features_key in adata.obsm:
        views = views_of(adata, features_key)
        if views is not None:
            return views, None
    if isinstance(sdata, ad.AnnData):
        raise ValueError(
            f"tta=True needs augmented views in obsm[{features_key + '_aug'!r}] or the SpatialData object with "
            "its images to compute them (nk.pp.augmented_features)."
        )
    from spatialdata import SpatialData

    table = adata.copy()
    table.obsm[features_key] = feats
    if feat_params is not None:
        table.uns[features_key] = feat_params
    base = target if target is not None else sdata
    work = SpatialData(images=dict(sdata.images), shapes=dict(base.shapes), tables={table_key: table})
    out = augmented_features(work, features_key=features_key, table_key=table_key, copy=True)
    key = f"{features_key}_aug"
    return views_of(out, features_key, key), out.uns[key]


def _replay(encoder: dict[str, Any], features_key: str, table_key: str) -> dict[str, Any]:
    """Arguments replaying the model's ``histology_features`` settings on another slide."""
    params = {k: v for k, v in encoder.items() if k not in DATASET_KEYS}
    params["key_added"] = features_key
    params["table_key"] = table_key
    return params


def _with_tiles(sdata, table: ad.AnnData, shapes, table_key: str):
    """A lightweight SpatialData holding the image(s) plus the new tiles, for computing features."""
    from spatialdata import SpatialData

    lib = str(table.obs[LIBRARY_KEY].iloc[0])
    return SpatialData(
        images=dict(sdata.images), shapes={shapes_name(lib, "tile"): shapes}, tables={table_key: table}
    )
