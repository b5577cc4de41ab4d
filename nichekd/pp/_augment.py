"""Features of augmented views of every patch: stain, orientation and scale changes seen during training.

Sections stained on other days and scanned on other scanners differ in colour, and tissue has no preferred
orientation. Encoding a few augmented views of each training patch (HED colour jitter, flips, 90-degree
rotations, small scale changes) and letting the student draw one view per cell and epoch teaches it features
that survive those changes (``nk.tl.distill`` does this when the views exist).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import LIBRARY_KEY, TABLE_KEY
from .._core.records import claim, store_params
from .._core.runtime import resolve_device
from .._core.table import get_table, library_labels
from ..models import encoders as _enc
from . import _features

# views per patch: obsm holds n_views times the features, and each view is a full encoder pass
MAX_VIEWS = 64


def hed_jitter(patches: np.ndarray, rng: np.random.Generator, sigma: float = 0.05) -> np.ndarray:
    """Perturb each patch's hematoxylin, eosin and DAB channels: ``c * (1 + a) + b``, ``a, b ~ U(-sigma, sigma)``.

    The stain augmentation of Tellez et al. (2018), on ``(n, 3, h, w)`` uint8 RGB patches.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> hed_jitter(np.full((2, 3, 8, 8), 200, np.uint8), rng).shape
    (2, 3, 8, 8)
    """
    if sigma <= 0:
        return patches
    hed = _enc._stain.rgb_to_hed(patches, clip=False)
    n = len(patches)
    alpha = 1.0 + rng.uniform(-sigma, sigma, (n, 3, 1, 1)).astype(np.float32)
    beta = rng.uniform(-sigma, sigma, (n, 3, 1, 1)).astype(np.float32)
    # the bias is relative to the stain's typical density (~0.1 in rgb2hed units), not absolute
    return _enc._stain.hed_to_rgb(hed * alpha + beta * 0.1)


def flip_rotate(patches: np.ndarray, rng: np.random.Generator, flips: bool = True,
                rotations: bool = True) -> np.ndarray:  # fmt: skip
    """Random horizontal flip and 90-degree rotation of each ``(n, 3, h, w)`` patch (the dihedral group).

    Examples
    --------
    >>> x = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    >>> flip_rotate(x, np.random.default_rng(0)).shape
    (2, 3, 4, 4)
    """
    out = patches.copy()
    n = len(out)
    flip = rng.random(n) < 0.5 if flips else np.zeros(n, bool)
    turns = rng.integers(0, 4, n) if rotations else np.zeros(n, int)
    for i in range(n):
        p = out[i]
        if flip[i]:
            p = p[:, :, ::-1]
        if turns[i]:
            p = np.rot90(p, int(turns[i]), axes=(1, 2))
        out[i] = p
    return out


def _library_standardize(views: np.ndarray, labels: np.ndarray, fit: np.ndarray | None = None) -> np.ndarray:
    """Z-score ``(n, V, d)`` views per library with statistics pooled over the views (as the originals were),
    from the library's training cells when there is a split (``fit``): the originals' rule on every view."""
    n, v, d = views.shape
    flat = _features._standardize(
        views.reshape(n * v, d), np.repeat(labels, v), None if fit is None else np.repeat(fit, v)
    )
    return flat.reshape(n, v, d)


@inject_docs
def augmented_features(
    sdata: Any,
    *,
    features_key: str,
    n_views: int = 4,
    hed_sigma: float = 0.05,
    flips: bool = True,
    rotations: bool = True,
    scale_range: float = 0.1,
    backbone: Any = None,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    key_added: str | None = None,
    random_state: int = 0,
    overwrite: bool = False,
    table_key: str = TABLE_KEY,
    library_key: str = LIBRARY_KEY,
    copy: bool = False,
) -> ad.AnnData | None:
    """Encode ``n_views`` augmented views of every patch with the settings of ``features_key``.

    Each view reads the patch at ``patch_size_um * s`` (one scale ``s ~ U(1 - scale_range, 1 + scale_range)``
    per view, resampled to the encoder's input size), then applies a random flip, 90-degree rotation and HED
    colour jitter per patch, then the same stain normalisation, encoder and per-library standardisation as
    ``features_key`` (its recorded ``histology_features`` parameters, stain reference included).

    Parameters
    ----------
    sdata
        SpatialData in the nichekd layout with the H&E images.
    features_key
        ``obsm`` key of features from ``nk.pp.histology_features``; its parameters are replayed.
    n_views
        Augmented views per patch.
    hed_sigma
        Strength of the HED colour jitter (0 disables it).
    flips, rotations
        Random horizontal flips and 90-degree rotations.
    scale_range
        Relative change of the patch's field of view per view (0 disables it).
    backbone
        The encoder when it cannot be rebuilt from its recorded name (a custom ``torch.nn.Module``).
    batch_size, num_workers, device
        As in ``histology_features``.
    key_added
        Default ``f"{features_key}_aug"``: ``obsm[key_added]`` is ``(n, n_views * d)`` float32 (view ``v`` in
        columns ``v * d : (v + 1) * d``) and ``uns[key_added]['params']`` records the settings and
        ``features_key`` (the provenance ``nk.tl.distill`` checks).
    random_state
        %(random_state)s
    overwrite
        %(overwrite)s
        Also recomputes views that ``key_added`` holds with the same settings (otherwise they are reused).
    table_key, library_key
        Table and its ``obs`` column of sections.
    copy
        %(copy)s

    Returns
    -------
    ``None``, or the modified table copy if ``copy=True``.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.synthetic_tissue(n_cells=500, random_state=0)  # doctest: +SKIP
    >>> nk.pp.histology_features(sdata, backbone="stain", key_added="he")  # doctest: +SKIP
    >>> nk.pp.augmented_features(sdata, features_key="he", n_views=4)  # doctest: +SKIP
    >>> sdata.tables["table"].obsm["he_aug"].shape  # doctest: +SKIP
    (500, 108)
    """
    _val.check_int("n_views", n_views, maximum=MAX_VIEWS)
    _val.check_nonnegative("hed_sigma", hed_sigma)
    if _val.check_nonnegative("scale_range", scale_range) >= 0.5:
        raise ValueError(f"scale_range must be in [0, 0.5), got {scale_range!r}.")
    _val.check_int("batch_size", batch_size)
    _val.check_int("num_workers", num_workers, minimum=0)
    _val.check_seed("random_state", random_state)
    table = get_table(sdata, table_key)
    if isinstance(sdata, ad.AnnData):
        raise ValueError("augmented_features needs the SpatialData object with its H&E images, not a table.")
    if features_key not in table.obsm or not isinstance(table.uns.get(features_key), Mapping):
        raise KeyError(
            f"No histology features with recorded parameters at obsm/uns[{features_key!r}]; run "
            f"nk.pp.histology_features(sdata, key_added={features_key!r}) first."
        )
    src = dict(table.uns[features_key].get("params", {}))
    if src.get("backbone") in (None, "precomputed"):
        raise ValueError(
            f"obsm[{features_key!r}] was not computed from images by nichekd (backbone "
            f"{src.get('backbone')!r}); augmented views need the encoder and the patch size."
        )
    key_added = key_added or f"{features_key}_aug"
    written = claim(
        table, [("obsm", key_added), ("uns", key_added)], writer="augmented_features", overwrite=overwrite
    )
    settings = {
        "features_key": features_key, "n_views": int(n_views), "hed_sigma": float(hed_sigma),
        "flips": bool(flips), "rotations": bool(rotations), "scale_range": float(scale_range),
        "random_state": int(random_state), "source_date": src.get("date"),
    }  # fmt: skip
    old = (
        table.uns.get(key_added, {}).get("params", {})
        if isinstance(table.uns.get(key_added), Mapping)
        else {}
    )
    if key_added in table.obsm and not overwrite:
        if all(old.get(k) == v for k, v in settings.items() if v is not None):
            return table.copy() if copy else None  # same views: reuse the cache
        raise ValueError(
            f"obsm[{key_added!r}] holds views of other settings or other features; pass overwrite=True."
        )
    name = src["backbone"]
    if backbone is None and not (isinstance(name, str) and _is_rebuildable(name)):
        raise ValueError(
            f"The backbone {name!r} cannot be rebuilt from its name; pass backbone= (the module)."
        )
    build_from = backbone if backbone is not None else name
    spec = _enc.resolve_spec(
        build_from,
        **({} if backbone is None and not name.startswith(("timm:", "hf-hub:")) else
           {k: src.get(k) for k in ("input_size", "mpp", "mean", "std")}),
        checkpoint_path=src.get("checkpoint_path"),
    )  # fmt: skip
    labels = np.asarray(library_labels(table, library_key)).astype(str)
    patch_um = float(src["patch_size_um"])
    rng = np.random.default_rng(random_state)
    scales = (
        1.0 + rng.uniform(-scale_range, scale_range, int(n_views)) if scale_range > 0 else np.ones(n_views)
    )
    # every check (image found, patches on the image at the largest scale) runs before any encoding
    plans = [
        _features._plan(
            sdata, table_key, library_key, src.get("image_key"), src.get("shapes_key"), patch_um * s, spec
        )
        for s in scales
    ]
    method, reference = src.get("stain_normalization"), src.get("stain_reference")
    if method is not None and not isinstance(reference, Mapping):
        raise ValueError(f"uns[{features_key!r}] records stain normalisation without its reference.")
    dev = resolve_device(device) if spec.kind != "handcrafted" else "cpu"
    encoder = _enc.build_encoder(
        build_from,
        spec,
        device=dev,
        checkpoint_path=src.get("checkpoint_path"),
        precision=src.get("precision", "auto"),  # the views run as the source features did
    )
    views = []
    for v, (plan, s) in enumerate(zip(plans, scales, strict=True)):
        view_rng = np.random.default_rng([int(random_state), v])

        def transform(x: np.ndarray, r: np.random.Generator = view_rng) -> np.ndarray:
            return hed_jitter(flip_rotate(x, r, flips, rotations), r, hed_sigma)

        views.append(
            _features._encode(
                encoder,
                plan,
                table.n_obs,
                spec,
                patch_um * s,
                batch_size,
                num_workers,
                method,
                None if method is None else dict(reference),
                transform=transform,
                desc=f"augmented view {v + 1}/{n_views}",
            )  # fmt: skip
        )
    stacked = np.stack(views, 1)  # (n, V, d)
    if src.get("standardize") == "library":
        stacked = _library_standardize(stacked, labels, _features.fit_rows(table))
    d = np.asarray(table.obsm[features_key]).shape[1]
    if stacked.shape[2] != d:
        raise ValueError(f"Views have {stacked.shape[2]} features but obsm[{features_key!r}] has {d}.")

    target = table.copy() if copy else table
    target.obsm[key_added] = stacked.reshape(table.n_obs, -1).astype(np.float32)
    store_params(
        target, key_added, {**settings, "scales": scales.tolist(), "n_features": int(d)}, claim=written
    )
    return target if copy else None


def _is_rebuildable(name: str) -> bool:
    return name.startswith(("timm:", "hf-hub:")) or name in _enc.known_backbones()


def views_of(adata: ad.AnnData, features_key: str, key: str | None = None) -> np.ndarray | None:
    """``(n, V, d)`` augmented views of ``features_key`` (``obsm[f"{features_key}_aug"]``), or ``None``.

    Raises if the stored views were computed from other features.

    Examples
    --------
    >>> views_of(adata, "he")  # doctest: +SKIP
    """
    key = key or f"{features_key}_aug"
    if key not in adata.obsm:
        return None
    params = adata.uns.get(key, {}).get("params", {}) if isinstance(adata.uns.get(key), Mapping) else {}
    if params.get("features_key") not in (None, features_key):
        raise ValueError(
            f"obsm[{key!r}] holds views of obsm[{params['features_key']!r}], not of obsm[{features_key!r}]."
        )
    d = np.asarray(adata.obsm[features_key]).shape[1]
    x = np.asarray(adata.obsm[key], dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % d or len(x) != adata.n_obs:
        raise ValueError(f"obsm[{key!r}] must be (n_cells, n_views * {d}), got {x.shape}.")
    return x.reshape(len(x), -1, d)
