"""Histology patch features: one vector per spot/cell from the H&E around it."""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._core import patches as _image
from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.feature_record import FEATURE_SETTINGS, FITTED_SETTINGS, NAMING_SETTINGS, same_setting
from .._core.keys import INSTANCE_KEY, LIBRARY_KEY, SPLIT_KEY, TABLE_KEY
from .._core.keys import features_key as default_features_key
from .._core.records import claim, store_params
from .._core.runtime import check_device, resolve_device
from .._core.spatial import resolve, shape_centroids
from .._core.table import get_table, library_labels
from ..models import encoders as _enc
from . import _grid

# a cached result is reused only if every setting that defines the features, and the names of the data, match
_SETTINGS = tuple(k for k in FEATURE_SETTINGS if k not in FITTED_SETTINGS) + NAMING_SETTINGS
# Keys recorded in params for provenance only; accepted (and ignored) on replay.
_PROVENANCE = ("weights", "output_dim", "mpp_used", "pyramid_level", "pixel_rule", "embedding", "kind", "device_used",
               "versions", "date", "table_key", "library_key", "normalization", "precision_used",
               "threads_used", "unset", "grid_nodes", "grid_choice", "statistics_from", "fitted_statistics")  # fmt: skip


def _centres(sdata, table: ad.AnnData, lib, shapes_key: str) -> np.ndarray:
    """Micron centres of library ``lib``'s rows from the centroids of another shapes element ``shapes_key``
    (registered to the library's coordinate system, matched through the table's instance key)."""
    from spatialdata.transformations import get_transformation

    if shapes_key not in sdata.shapes:
        raise KeyError(
            f"No shapes element {shapes_key!r}; the object has {sorted(sdata.shapes)}. Pass shapes_key= with one."
        )
    shapes = sdata.shapes[shapes_key]
    cs = lib.coordinate_system
    transforms = get_transformation(shapes, get_all=True) or {}
    if cs not in transforms:
        raise ValueError(
            f"Shapes {shapes_key!r} are not registered to the coordinate system {cs!r} of library {lib.name!r} "
            f"(they are registered to {sorted(transforms)}); register them to {cs!r} or pass the shapes element "
            "of this library."
        )
    aff = np.asarray(transforms[cs].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))
    xy = shape_centroids(shapes) @ aff[:2, :2].T + aff[:2, 2]
    instance_key = table.uns.get("spatialdata_attrs", {}).get("instance_key", INSTANCE_KEY)
    pos = pd.Index(shapes.index).get_indexer(table.obs[instance_key].to_numpy()[lib.rows])
    if (pos < 0).any():
        raise ValueError(
            f"{(pos < 0).sum()} observations of library {lib.name!r} have no shape in {shapes_key!r}."
        )
    return xy[pos] * lib.microns_per_unit


def fitted_statistics(
    standardize: str | None, stain_normalization: str | None, stain_reference: Any
) -> list[str]:
    """The statistics ``histology_features`` fits on the table's cells: the library z-score, and the stain
    reference unless one was given as a dict."""
    out = ["library z-score"] if standardize == "library" else []
    if stain_normalization is not None and not isinstance(stain_reference, Mapping):
        out.append("stain reference")
    return out


def statistics_from(fitted: list[str], fit: np.ndarray | None) -> str | None:
    """The cells the fitted statistics came from: ``"train"``, ``"all"``, or ``None`` when nothing was fitted."""
    if not fitted:
        return None
    return "train" if fit is not None else "all"


def fit_rows(table: ad.AnnData) -> np.ndarray | None:
    """Rows whose statistics may shape features: the training cells of ``obs['split']`` when there is a split
    (test features must not move training features), else ``None`` (every row)."""
    if SPLIT_KEY not in table.obs:
        return None
    return (table.obs[SPLIT_KEY].astype(str) == "train").to_numpy()


def _standardize(x: np.ndarray, labels: np.ndarray, fit: np.ndarray | None = None) -> np.ndarray:
    """Z-score every feature within each library (removes slide-level shifts).

    The statistics come from the library's rows in ``fit`` (its training cells), or from all its rows where it
    has none (a held-out section is standardised on itself: that moves only its own features).
    """
    out = x.copy()
    for lib in np.unique(labels):
        sel = labels == lib
        ref = sel & fit if fit is not None and (sel & fit).any() else sel
        mu, sd = x[ref].mean(0), x[ref].std(0)
        out[sel] = (x[sel] - mu) / np.where(sd > 1e-8, sd, 1.0)
    return out


# an encoder input side beyond this (pixels) is no patch encoder's; memory grows with its square
MAX_INPUT_SIZE = 4096


def check_feature_args(**given: Any) -> None:
    """The numeric and choice options of :func:`histology_features` that are given (also from
    :func:`histology_features_dask`, before any task starts); the defaults are valid."""
    checks = {
        "patch_size_um": lambda v: _val.check_optional_positive("patch_size_um", v, unit="microns"),
        "batch_size": lambda v: _val.check_int("batch_size", v),
        "num_workers": lambda v: _val.check_int("num_workers", v, minimum=0),
        "input_size": lambda v: _val.check_optional_int("input_size", v, maximum=MAX_INPUT_SIZE),
        "mpp": lambda v: _val.check_optional_positive("mpp", v, unit="microns per pixel"),
        "stain_normalization": lambda v: _val.check_choice(
            "stain_normalization", v, (None, "macenko", "reinhard")
        ),
        "standardize": lambda v: _val.check_choice("standardize", v, (None, "library")),
        "grid_um": lambda v: (
            (isinstance(v, str) and v == "auto") or _val.check_optional_positive("grid_um", v, unit="microns")
        ),
        "precision": lambda v: _val.check_choice("precision", v, tuple(_enc.PRECISIONS)),
        "n_threads": lambda v: _val.check_optional_int("n_threads", v),
    }
    for name, value in given.items():
        if name in checks:
            checks[name](value)


# set while histology_features encodes one partition of a section whose grid extent was checked as a whole
_PARTITION = contextvars.ContextVar("nichekd_feature_partition", default=False)


@contextlib.contextmanager
def partition_of_checked_section():
    """Within: ``histology_features`` skips the grid-extent check (a dask partition may be smaller than one
    grid cell; :func:`histology_features_dask` checked the whole section)."""
    token = _PARTITION.set(True)
    try:
        yield
    finally:
        _PARTITION.reset(token)


def check_grid_extent(grid_um: float, centres: Mapping[str, np.ndarray]) -> None:
    """Refuse a grid spacing larger than every section (each observation would read out the same few nodes:
    one feature row for all); warn when it exceeds some sections only. ``centres``: micron positions per
    section."""
    extents = {
        lib: np.ptp(np.asarray(c, float).reshape(-1, 2), axis=0) for lib, c in centres.items() if len(c)
    }
    over = {lib: e for lib, e in extents.items() if grid_um > e.max()}
    if not over:
        return
    shown = "; ".join(f"{lib!r}: {e[0]:.4g} x {e[1]:.4g} um" for lib, e in list(over.items())[:4])
    message = (
        f"grid_um={grid_um:g} is larger than the extent of {'every section' if len(over) == len(extents) else 'some sections'} "
        f"({shown}): all observations of such a section read out the same few grid nodes, so they get (nearly) "
        "one feature row. The grid spacing is in microns: use one well below the section (about the patch or "
        "spot spacing), or grid_um=None for one patch per observation."
    )
    if len(over) == len(extents):
        raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=3)


@inject_docs
def histology_features(
    sdata: Any,
    *,
    image_key: str | Mapping[str, str] | None = None,
    shapes_key: str | None = None,
    table_key: str = TABLE_KEY,
    library_key: str = LIBRARY_KEY,
    backbone: Any = "efficientnet_lite0",
    patch_size_um: float | None = None,
    batch_size: int = 64,
    device: str = "auto",
    key_added: str | None = None,
    overwrite: bool = False,
    num_workers: int = 2,
    checkpoint_path: str | None = None,
    input_size: int | None = None,
    mpp: float | None = None,
    mean: Any = None,
    std: Any = None,
    features_key: str | None = None,
    stain_normalization: str | None = None,
    stain_reference: Mapping[str, Any] | list[str] | None = None,
    standardize: str | None = None,
    grid_um: float | str | None = "auto",
    precision: str = "auto",
    n_threads: int | None = None,
    copy: bool = False,
    **provenance: Any,
) -> ad.AnnData | None:
    """Encode the H&E patch around every spot/cell into a feature vector.

    Each patch is a square of ``patch_size_um`` microns centred on the observation (``obsm['spatial']`` in the
    library's coordinate system), cut from the coarsest pyramid level still at least as fine as the encoder's
    working resolution, resampled to the encoder's input size, padded with white background at image borders.
    Images are read tile by tile (never whole); each library's observations use that library's image.

    Parameters
    ----------
    sdata
        SpatialData in the nichekd layout (images needed unless ``backbone="precomputed"``).
    image_key
        Image element to use (a name for one library, or ``{library: name}``); default: the layout's record.
    shapes_key
        Take centres from this shapes element's centroids (must be registered to the image's coordinate system)
        instead of ``obsm['spatial']``.
    table_key
        %(table_key)s
    library_key
        %(library_key)s
    backbone
        A name from :func:`list_backbones` (``"efficientnet_lite0"``, ``"stain"``, ``"uni2_h"``, ...),
        ``"timm:<architecture>"`` with ``checkpoint_path``, ``"hf-hub:<org/name>"``, a ``torch.nn.Module`` or a
        callable on normalised ``(n, 3, s, s)`` tensors, or ``"precomputed"`` with ``features_key``.
    patch_size_um
        Patch side in microns; default the encoder's field of view (input size x its microns per pixel).
    batch_size
        Patches read and handed to the encoder at once; on CPU a neural encoder runs them in micro-batches
        sized to the last-level cache. The stain encoder takes at least 1,024 (chunks of 64 on its threads).
        Features do not depend on it.
    device
        %(device)s
    key_added
        ``obsm`` and ``uns`` key; default ``f"X_{backbone}"``.
    overwrite
        %(overwrite)s
        Also recomputes features that ``key_added`` holds with the same settings (otherwise they are reused).
    num_workers
        Threads reading image tiles and resampling patches ahead of the encoder.
    checkpoint_path
        Local weights for the backbone (foundation models without hub access, ``timm:`` architectures).
    input_size, mpp, mean, std
        Preprocessing of a custom module/callable or ``timm:``/``hf-hub:`` backbone (defaults 224 px, 0.5 um/px,
        ImageNet mean/std); fixed for registered backbones.
    features_key
        With ``backbone="precomputed"``: the ``obsm`` key holding the features.
    stain_normalization
        ``None``, ``"macenko"`` or ``"reinhard"``: normalise each patch's stain to ``stain_reference``.
    stain_reference
        Reference statistics (a dict as stored in ``uns[key_added]['params']``) or a list of libraries whose
        patches define them (default: all libraries).
    standardize
        ``"library"``: z-score every feature within each library; ``None``: raw features.
    grid_um
        Encode one patch per node of a square grid of this spacing (microns) over the observations and give
        each observation the bilinear interpolation of the 4 nodes around it, instead of one patch per
        observation. ``"auto"`` (default): a grid of a quarter of the patch side (28 um for 112 um patches)
        on large, dense sections, i.e. at least 100,000 observations and at least 8x fewer encoder passes (a
        full Visium HD section of 8 um bins: about 11x), else one patch per observation (smaller sections,
        where it is affordable and scores better, Visium spots, cells of most tissues); the choice and its
        reason are recorded (``grid_um``, ``grid_choice``) and
        :func:`nichekd.tl.predict_niches` replays the recorded spacing. A number forces that spacing;
        ``None`` forces one patch per observation. Agreement of grid and per-bin features:
        ``docs/scaling.md``.
    precision
        Arithmetic of neural encoders: ``"auto"`` (bf16 autocast on CPUs with native bf16, i.e. AVX512-BF16 or
        AMX, and fp32 on other CPUs; bf16, else fp16, autocast on CUDA), ``"fp32"``, ``"bf16"`` or ``"fp16"``
        (CUDA/MPS). bf16 features agree with fp32 ones to a cosine similarity above 0.97 per patch
        (EfficientNet-Lite0 on real H&E; speed in ``benchmarks/results_encoders.md``). Recorded as
        ``precision_used``; the stain encoder always computes in float32.
    n_threads
        CPU threads for the encoder; default torch's current setting (``torch.set_num_threads``), which is
        left as it was.
    copy
        %(copy)s
    **provenance
        Keys recorded in ``uns[key_added]['params']`` for provenance only, so that
        ``histology_features(other, **adata.uns[key]['params'])`` replays the same settings.

    Returns
    -------
    ``None``, or the table copy if ``copy=True``. Sets ``obsm[key_added]`` (``(n, d)`` float32) and
    ``uns[key_added]['params']`` (backbone, weights, patch size in microns, microns per pixel and pyramid level
    used per library, input size, mean/std, options).

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.synthetic_tissue(n_cells=500, random_state=0)  # doctest: +SKIP
    >>> nk.pp.histology_features(sdata, backbone="stain")  # doctest: +SKIP
    >>> sdata.tables["table"].obsm["X_stain"].shape  # doctest: +SKIP
    (500, 27)
    >>> params = sdata.tables["table"].uns["X_stain"]["params"]  # doctest: +SKIP
    >>> nk.pp.histology_features(other_sdata, **params)  # same settings on new slides  # doctest: +SKIP
    """
    unknown = set(provenance) - set(_PROVENANCE)
    if unknown:
        raise TypeError(f"histology_features() got unexpected keyword arguments {sorted(unknown)}.")
    check_feature_args(
        patch_size_um=patch_size_um, batch_size=batch_size, num_workers=num_workers, input_size=input_size,
        mpp=mpp, stain_normalization=stain_normalization, standardize=standardize, grid_um=grid_um,
        precision=precision, n_threads=n_threads,
    )  # fmt: skip
    check_device(device)  # every backbone: the handcrafted ones run on the CPU, but a typo is still refused
    for key_name, key in (("features_key", features_key), ("shapes_key", shapes_key)):
        _val.check_key(key_name, key, optional=True)
    table = get_table(sdata, table_key)
    spec = _enc.resolve_spec(
        backbone, input_size=input_size, mpp=mpp, mean=mean, std=std, checkpoint_path=checkpoint_path
    )
    name = spec.name
    if key_added is None:
        precomputed_key = features_key if name == "precomputed" and features_key else None
        key_added = precomputed_key or default_features_key(name)
    if table.n_obs == 0:
        raise ValueError("The table has no observations.")
    labels = np.asarray(library_labels(table, library_key)).astype(str)

    if name == "precomputed":
        feats, per_lib = _precomputed(table, features_key), {}
        patch_size_um, grid_um, grid_choice = None, None, None
    else:
        patch_size_um = float(patch_size_um if patch_size_um is not None else spec.input_size * spec.mpp)
        per_lib = _plan(sdata, table_key, library_key, image_key, shapes_key, patch_size_um, spec)
        grid_um, grid_choice = _grid.resolve_grid_um(
            grid_um, {lib: p["centres"] for lib, p in per_lib.items()}, patch_size_um
        )
        if grid_um is not None and not _PARTITION.get():
            check_grid_extent(float(grid_um), {lib: p["centres"] for lib, p in per_lib.items()})

    settings = {
        "backbone": name, "weights": spec.weights, "checkpoint_path": None if checkpoint_path is None else str(checkpoint_path),
        "patch_size_um": patch_size_um, "input_size": spec.input_size or None, "mpp": spec.mpp if name != "precomputed" else None,
        "mean": list(spec.mean), "std": list(spec.std), "features_key": features_key,
        "stain_normalization": stain_normalization, "standardize": standardize,
        "image_key": image_key if isinstance(image_key, str | type(None)) else dict(image_key), "shapes_key": shapes_key,
        "grid_um": None if grid_um is None else float(grid_um),
    }  # fmt: skip
    # registered backbones imply their preprocessing; custom and timm ones must replay it explicitly
    fixed = isinstance(backbone, str) and not name.startswith(("timm:", "hf-hub:"))
    replay = {k: v for k, v in settings.items() if not (fixed and k in ("input_size", "mpp", "mean", "std"))}

    existing = (
        table.uns.get(key_added, {}).get("params") if isinstance(table.uns.get(key_added), Mapping) else None
    )
    if name == "precomputed" and key_added == features_key and existing is not None:
        return table.copy() if copy else None  # features computed by nichekd: keep their own provenance
    # the user's own features registered in place keep their values (unless standardised): only the record is new
    in_place = name == "precomputed" and key_added == features_key and standardize is None
    targets = [("uns", key_added)] + ([] if in_place else [("obsm", key_added)])
    written = claim(table, targets, writer="histology_features", overwrite=overwrite)
    if key_added in table.obsm and existing is not None and not overwrite:
        diff = [k for k in _SETTINGS if k in replay or k in existing]
        diff = [k for k in diff if not same_setting(existing.get(k), replay.get(k))]
        if diff == ["grid_um"] and str(grid_choice).startswith("auto"):
            diff = []  # the spacing was left to nichekd: features made with another recorded choice are kept
        if precision != "auto" and spec.kind != "handcrafted":  # an explicit request must be honoured
            if existing.get("precision_used", "fp32") != precision:
                diff.append("precision_used")
        if not diff:
            return table.copy() if copy else None  # same settings: reuse
        wanted = {**settings, "precision_used": precision}
        raise ValueError(
            f"obsm[{key_added!r}] already holds features computed with different settings ({diff}: "
            f"{[existing.get(k) for k in diff]} vs {[wanted.get(k) for k in diff]}). Pass overwrite=True to "
            "replace them, or key_added= to keep both."
        )

    reference, readout = None, None
    fit = fit_rows(table)  # the cells whose statistics may shape the features (training cells of a split)
    fitted = fitted_statistics(standardize, stain_normalization, stain_reference)
    if name != "precomputed":
        dev = resolve_device(device) if spec.kind != "handcrafted" else "cpu"
        if stain_normalization is not None:
            reference = _reference(stain_normalization, stain_reference, per_lib, patch_size_um, fit)
        encoder = _enc.build_encoder(
            backbone,
            spec,
            device=dev,
            checkpoint_path=checkpoint_path,
            precision=precision,
            n_threads=n_threads,
        )
        # with a grid, the patches are the grid nodes' and each observation reads out its 4 nodes
        work_plan, n_work = per_lib, table.n_obs
        if grid_um is not None:
            work_plan, readout, n_work = _grid.grid_plan(per_lib, float(grid_um))
        feats = _encode(
            encoder,
            work_plan,
            n_work,
            spec,
            patch_size_um,
            batch_size,
            num_workers,
            stain_normalization,
            reference,
        )
        if readout is not None:
            feats = _grid.read_out(feats, readout, table.n_obs)
    if standardize == "library":
        feats = _standardize(feats, labels, fit)

    target = table.copy() if copy else table
    target.obsm[key_added] = feats.astype(np.float32, copy=False)
    params = {
        **replay,
        "stain_reference": reference,
        # which statistics were fitted on these cells (library z-score, stain reference), and on which cells
        "fitted_statistics": fitted,
        "statistics_from": statistics_from(fitted, fit),
        "table_key": table_key, "library_key": library_key,
        "output_dim": int(feats.shape[1]), "kind": spec.kind, "embedding": spec.embedding,
        "normalization": {"mean": list(spec.mean), "std": list(spec.std), "scale": "x / 255"},
        "mpp_used": {lib: p["level"].mpp for lib, p in per_lib.items()},
        "pyramid_level": {lib: p["level"].index for lib, p in per_lib.items()},
        # how each image's pixels became RGB uint8 (one rule per image: dtype range, channel order)
        "pixel_rule": {lib: p["pyramid"].pixel_rule.rule for lib, p in per_lib.items()},
        "device_used": None if name == "precomputed" else str(getattr(encoder, "device", "cpu")),
        "precision": precision,
        "precision_used": None if name == "precomputed" else encoder.precision,
        "threads_used": None if name == "precomputed" else int(encoder.n_threads or _torch_threads()),
        "grid_nodes": None if readout is None else int(n_work),
        "grid_choice": grid_choice,
    }  # fmt: skip
    store_params(target, key_added, params, claim=written)
    return target if copy else None


def _precomputed(table: ad.AnnData, features_key: str | None) -> np.ndarray:
    if features_key is None:
        raise ValueError(
            "backbone='precomputed' needs features_key= naming the obsm entry with the features."
        )
    if features_key not in table.obsm:
        raise KeyError(f"No obsm[{features_key!r}]; the table has obsm keys {sorted(table.obsm)}.")
    x = table.obsm[features_key]
    x = np.asarray(x.to_numpy() if hasattr(x, "to_numpy") else x)
    if x.ndim != 2 or x.shape[0] != table.n_obs or not np.issubdtype(x.dtype, np.number):
        raise ValueError(
            f"obsm[{features_key!r}] must be a numeric (n_obs, d) array, got {x.shape} {x.dtype}."
        )
    if not np.isfinite(x).all():
        raise ValueError(
            f"obsm[{features_key!r}] has NaN or infinite values; fix or drop those observations."
        )
    return x.astype(np.float32)


def _plan(
    sdata, table_key, library_key, image_key, shapes_key, patch_size_um, spec
) -> dict[str, dict[str, Any]]:
    """Per library: rows, centres, image pyramid and level; every check runs before any work."""
    if isinstance(sdata, ad.AnnData):
        raise ValueError(
            "histology_features needs the SpatialData object (with images), not a bare table; "
            "or use backbone='precomputed'."
        )
    ctx = resolve(sdata, table_key=table_key, library_key=library_key, image_key=image_key)
    if isinstance(image_key, str) and len(ctx.libraries) > 1:
        raise ValueError(
            "image_key= names one image but the table has several libraries; pass {library: image}."
        )
    plan = {}
    for name, lib in ctx.libraries.items():
        pyramid = ctx.pyramid(name)
        centres = ctx.xy_um[lib.rows] if shapes_key is None else _centres(sdata, ctx.table, lib, shapes_key)
        _image.check_patch_geometry(pyramid, centres, patch_size_um)
        level = pyramid.level_for(patch_size_um / spec.input_size)
        plan[name] = {"rows": lib.rows, "centres": centres, "pyramid": pyramid, "level": level}
    return plan


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _reference(
    method: str, reference: Any, plan: dict, patch_size_um: float, fit: np.ndarray | None = None
) -> dict[str, Any]:
    """Stain reference: given as a dict, or computed from up to 256 patches of the given libraries (of their
    training cells when there is a split: ``fit``)."""
    if isinstance(reference, Mapping):
        ref = dict(reference)
        if ref.get("method", method) != method:
            raise ValueError(f"stain_reference was computed for {ref.get('method')!r}, not {method!r}.")
        return {"method": method, **{k: v for k, v in ref.items() if k != "method"}}
    libs = list(plan) if reference is None else [str(x) for x in reference]
    missing = [lib for lib in libs if lib not in plan]
    if missing:
        raise KeyError(f"stain_reference libraries {missing} are not in the table ({list(plan)}).")
    rng = np.random.default_rng(0)
    patches = []
    if fit is not None and reference is None:  # held-out sections do not shape the default reference
        libs = [lib for lib in libs if fit[plan[lib]["rows"]].any()] or libs
    for lib in libs:
        p = plan[lib]
        pool = np.arange(len(p["rows"]))
        if fit is not None and fit[p["rows"]].any():
            pool = pool[fit[p["rows"]]]  # its training cells only
        pick = np.sort(rng.choice(pool, min(256 // len(libs) + 1, len(pool)), replace=False))
        patches.append(_image.read_patches(p["pyramid"], p["centres"][pick], patch_size_um, 64))
    return _enc._stain.stain_reference(method, np.concatenate(patches))


def _batches(stream, batch_size: int):
    """Regroup ``(indices, patches)`` tiles from :func:`_image.iter_patches` into batches of ``batch_size``.

    Full batches are views into each tile's array; only the few patches left over at a tile's end are copied
    (joined with the next tile's first ones), so a tile of thousands of patches is never copied again per batch.
    """
    idx_left, patch_left = None, None
    for idx, patches in stream:
        if idx_left is not None:
            need = batch_size - len(idx_left)
            idx_left = np.concatenate([idx_left, idx[:need]])
            patch_left = np.concatenate([patch_left, patches[:need]])
            idx, patches = idx[need:], patches[need:]
            if len(idx_left) < batch_size:
                continue
            yield idx_left, patch_left
            idx_left, patch_left = None, None
        full = len(idx) - len(idx) % batch_size
        for s in range(0, full, batch_size):
            yield idx[s : s + batch_size], patches[s : s + batch_size]
        if full < len(idx):
            idx_left, patch_left = idx[full:], patches[full:]
    if idx_left is not None:
        yield idx_left, patch_left


def _encode(
    encoder,
    plan,
    n_obs,
    spec,
    patch_size_um,
    batch_size,
    num_workers,
    stain_normalization,
    reference,
    transform=None,
    desc=None,
):
    """Features of every planned observation, library by library, batch by batch.

    ``transform`` (optional) maps each batch of uint8 patches to new patches before stain normalisation and
    encoding: the hook ``nk.pp.augmented_features`` uses to encode augmented views.
    """

    def encode(x: np.ndarray) -> np.ndarray:
        if transform is not None:
            x = transform(x)
        if stain_normalization is not None:
            x = _enc._stain.normalize_stain(x, stain_normalization, reference)
        return np.asarray(encoder(x), dtype=np.float32).reshape(len(x), -1)

    out = None
    total = sum(len(p["rows"]) for p in plan.values())
    # one batch encodes in its own thread while this one reads the next: the reader never starves the encoder.
    # A single encoding thread keeps the batches in order (augmentations draw from one generator in turn).
    with (
        tqdm(total=total, desc=desc or f"histology features ({spec.name})", unit="patch") as bar,
        ThreadPoolExecutor(1, thread_name_prefix="nichekd-encode") as runner,
    ):
        pending = None
        for p in plan.values():
            stream = _image.iter_patches(
                p["pyramid"],
                p["centres"],
                patch_size_um,
                spec.input_size,
                # a dask partition reads only its own part of the image: never the whole level
                level=p["level"] if _PARTITION.get() else _image.computed_once(p["pyramid"], p["level"]),
                num_workers=num_workers,
            )
            for idx, x in _batches(stream, max(batch_size, getattr(encoder, "min_batch", 1))):
                job = (p["rows"][idx], runner.submit(contextvars.copy_context().run, encode, x))
                if pending is not None:
                    out = _store(out, n_obs, *pending, bar)
                pending = job
        if pending is not None:
            out = _store(out, n_obs, *pending, bar)
    return out


def _store(out: np.ndarray | None, n_obs: int, rows: np.ndarray, job: Future, bar) -> np.ndarray:
    """Write one encoded batch's features into ``out`` (allocated at the first batch, once the width is known)."""
    f = job.result()
    if out is None:
        out = np.zeros((n_obs, f.shape[1]), dtype=np.float32)
    out[rows] = f
    bar.update(len(rows))
    return out
