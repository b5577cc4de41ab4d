"""Predict niches on H&E-only slides with a distilled student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from .._docs import inject_docs
from .._elements import resolve
from .._layout import (
    LIBRARY_KEY,
    REGION_KEY,
    TABLE_KEY,
    build_library,
    get_table,
    library_labels,
    shapes_name,
    spatial_coords,
)
from .._utils import store_params
from ..models.student import NicheStudent
from ._distill import write_niche_predictions

# settings of nk.pp.histology_features that determine the features (the rest is provenance or names the
# data, e.g. the image element or the resolution actually used on one slide)
ENCODER_KEYS = ("backbone", "weights", "checkpoint_path", "patch_size_um", "input_size", "mpp", "mean", "std",
                "stain_normalization", "standardize")  # fmt: skip
# recorded per dataset: never replayed onto another slide
DATASET_KEYS = {"versions", "date", "key_added", "table_key", "image_key", "shapes_key", "library_key", "copy",
                "overwrite", "mpp_used", "pyramid_level", "device_used"}  # fmt: skip


def encoder_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The entries of a ``histology_features`` params record that determine the features."""
    return {k: params[k] for k in ENCODER_KEYS if k in params}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float | np.number) and isinstance(b, int | float | np.number):
        return bool(np.isclose(float(a), float(b)))
    if isinstance(a, list | tuple | np.ndarray) and isinstance(b, list | tuple | np.ndarray):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check_encoder(model: NicheStudent, params: dict[str, Any], features_key: str) -> None:
    """Raise if features were computed with other encoder settings than the model's."""
    mine, theirs = encoder_settings(model.encoder), encoder_settings(params)
    diff = sorted(k for k in set(mine) & set(theirs) if not _same(mine[k], theirs[k]))
    if diff:
        detail = ", ".join(f"{k}: model {mine[k]!r} vs data {theirs[k]!r}" for k in diff)
        raise ValueError(
            f"obsm[{features_key!r}] was computed with other encoder settings than the model ({detail}). "
            f"Delete obsm[{features_key!r}] so that predict_niches recomputes it with the model's settings."
        )


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
) -> tuple[ad.AnnData, Any, tuple[str, Any]]:
    """Detect tissue, tile it and return the tiles' table, their shapes and the mask (nothing is written)."""
    from spatialdata import SpatialData

    from ..pp import tissue_mask, tissue_tiles

    image_key, library = _image_and_library(sdata, image_key, library)
    if tile_size_um is None:
        tile_size_um = model.encoder.get("patch_size_um")
        if tile_size_um is None:
            raise ValueError("The model records no patch size; pass tile_size_um= (microns).")
    mask_key = f"{library}_tissue"
    mask = (
        sdata.shapes[mask_key]
        if mask_key in sdata.shapes
        else tissue_mask(sdata, image_key=image_key, library=library, copy=True)
    )
    # tile on a lightweight object so that a failure leaves the user's object untouched
    work = SpatialData(images={image_key: sdata.images[image_key]}, shapes={mask_key: mask})
    xy = tissue_tiles(
        work,
        tile_size_um=float(tile_size_um),
        image_key=image_key,
        library=library,
        mask_key=mask_key,
        grid=grid,
    )
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
    return table, tiles_sd.shapes[shapes_name(library, "tile")], (mask_key, new_mask)


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
) -> None:
    """Predict niches from histology alone, on any SpatialData with an H&E image.

    With cells or spots in ``sdata[table_key]`` their niches are predicted. Without a table, tissue is
    detected (:func:`nichekd.pp.tissue_mask`) and tiled on a grid of ``tile_size_um``; a ``{library}_tiles``
    shapes element and a table annotating it are added. Features are computed with the model's own encoder
    settings (its recorded ``histology_features`` parameters), or reused when already present with the same
    settings.

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
        Tile spacing when tiling; default the model's patch size.
    grid
        ``"hex"`` or ``"square"`` tiling.
    library
        Predict one library only (default: all).
    library_key
        %(library_key)s
    key_added
        Writes ``obs[key_added]`` (the teacher's niche names), ``obsm[f"{key_added}_proba"]``,
        ``obs[f"{key_added}_entropy"]`` (uncertainty) and ``uns[key_added]['params']``.
    batch_size
        Cells per forward pass.
    device
        %(device)s

    Examples
    --------
    >>> import nichekd as nk
    >>> model = nk.models.NicheStudent.load("student_model")  # doctest: +SKIP
    >>> he = nk.io.read_wsi("slide.svs")  # doctest: +SKIP
    >>> nk.tl.predict_niches(he, model=model, tile_size_um=112)  # doctest: +SKIP
    >>> he.tables["table"].obs["student_niche"].value_counts()  # doctest: +SKIP
    """
    if not isinstance(model, NicheStudent):
        model = NicheStudent.load(model)
    if not model.is_fitted:
        raise ValueError("The model is not fitted; train it with nk.tl.distill or load a saved one.")
    features_key = model.features_key or "he_features"
    new_tiles, new_mask, feat_params = None, (None, None), None
    if table_key in getattr(sdata, "tables", {}) or isinstance(sdata, ad.AnnData):
        adata = get_table(sdata, table_key)
    else:
        adata, shapes, new_mask = _tile_table(sdata, model, image_key, library, tile_size_um, grid)
        new_tiles = shapes

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
    # tiles are built in microns; an existing table's coordinates are read from its elements
    xy = (
        spatial_coords(adata)
        if new_tiles is not None
        else resolve(sdata, table_key=table_key, library_key=library_key).xy_um
    )

    # features: reuse only when made with the model's settings, else replay its encoder
    if features_key in adata.obsm:
        params = adata.uns.get(features_key, {}).get("params", {}) if features_key in adata.uns else {}
        check_encoder(model, dict(params), features_key)
        feats = np.asarray(adata.obsm[features_key])
    else:
        if not encoder_settings(model.encoder):
            raise ValueError(
                f"No obsm[{features_key!r}] and the model records no encoder settings to recompute them; "
                "compute the features as for training and store them there."
            )
        from ..pp import histology_features

        target = sdata if new_tiles is None else _with_tiles(sdata, adata, new_tiles, table_key)
        work_table = histology_features(target, **_replay(model.encoder, features_key, table_key), copy=True)
        feats = np.asarray(work_table.obsm[features_key])
        feat_params = work_table.uns.get(features_key)
    if feats.ndim != 2 or feats.shape[1] != model.n_features:
        raise ValueError(
            f"The model expects {model.n_features} features per cell, obsm[{features_key!r}] has "
            f"{feats.shape[1] if feats.ndim == 2 else feats.shape}; the encoder does not match the model."
        )
    sel = np.flatnonzero(rows)
    if not np.isfinite(feats[sel]).all():
        raise ValueError(f"Some cells have NaN features in obsm[{features_key!r}] (e.g. off the image).")
    proba_sel = model.predict_proba(
        feats[sel], xy[sel], groups=libs[sel], batch_size=batch_size, device=device
    )

    # everything computed: write
    if new_tiles is not None:
        lib = str(libs[0])
        if new_mask[1] is not None:
            sdata.shapes[new_mask[0]] = new_mask[1]
        sdata.shapes[shapes_name(lib, "tile")] = new_tiles
        sdata.tables[table_key] = adata
    if features_key not in adata.obsm:
        adata.obsm[features_key] = feats
        if feat_params is not None:
            adata.uns[features_key] = feat_params
    write_niche_predictions(adata, key_added, proba_sel, model.niche_names, rows=sel)
    store_params(
        adata,
        key_added,
        {
            "model": repr(model),
            "niche_names": model.niche_names,
            "radius_um": model.radius_um,
            "features_key": features_key,
            "tiled": new_tiles is not None,
            "tile_size_um": tile_size_um,
            "grid": grid if new_tiles is not None else None,
            "library": library,
            "shapes_key": shapes_key,
        },
    )


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
