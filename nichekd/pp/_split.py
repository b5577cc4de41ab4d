"""Leak-free train/test splits of spatial data: strips, blocks or whole sections.

Neighbouring cells share tissue (and overlapping image patches), so a random split of cells leaks. The
paper's default holds out the 2nd of 4 horizontal strips per section and drops the cells within half a patch
of a train/test border ("buffer").
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import LIBRARY_KEY, SPLIT_KEY, TABLE_KEY
from .._core.records import cells_fingerprint, claim, latest_params, store_params, written_by
from .._core.spatial import micron_coords
from .._core.table import get_table, library_labels

SPLIT_LABELS = ("train", "test", "buffer")
METHODS = ("strips", "blocks", "libraries")
TEACHER_GUARDS = ("widen", "within")
READ_MARGIN_PX = 4
# more strips or blocks than this cut sections into slivers thinner than any buffer (and cost memory)
MAX_STRIPS = 100
MAX_BLOCKS = 32
# a section's train or test part smaller than this (observations, or share of the section) is warned about
MIN_PART_CELLS = 50
MIN_PART_FRACTION = 0.05


def teacher_reach_um(params: dict) -> float | None:
    """How far (microns) a teacher's label looks: its radius times the hops (``n_rings``) it chains."""
    radius = params.get("radius_um")
    if radius is None or not np.isfinite(float(radius)):
        return None
    rings = params.get("n_rings") if params.get("method") == "aggregate" else 1
    return float(radius) * max(1, int(rings or 1))


def _teacher_guard(adata: ad.AnnData, buffer_um: float, teacher_key: str | None, guard: str):
    """Widen the buffer (or flag within-side neighbourhoods) when the teacher's reach exceeds the gap."""
    entry = adata.uns.get(teacher_key) if teacher_key is not None else None
    params = entry.get("params", {}) if isinstance(entry, dict) else {}
    reach = teacher_reach_um(params)
    if reach is None or reach <= 2 * buffer_um:
        return buffer_um, None
    if params.get("split_key") is not None:
        return buffer_um, "within"  # the teacher's neighbourhoods already stop at the split
    if guard == "widen":
        return reach / 2.0, "widen"
    warnings.warn(
        f"The teacher's reach ({reach:.4g} um: radius x n_rings) exceeds the train-test gap "
        f"({2 * buffer_um:.4g} um): training targets would average test-strip expression. Refit the teacher "
        "after this split: nk.tl.teacher_niches(...) then fits within each side.",
        UserWarning,
        stacklevel=3,
    )
    return buffer_um, "within"


def _largest_patch(adata: ad.AnnData, features_key: str | None) -> tuple[float | None, str | None]:
    """The widest image region (microns) any recorded feature or augmented view reads, and which one.

    The width is the patch plus the resampling margin on both sides (``READ_MARGIN_PX`` pixels of the
    pyramid level read, from ``mpp_used``).

    ``histology_features`` records ``patch_size_um``; ``augmented_features`` records the ``scales`` of its
    views (up to ``1 + scale_range`` times the source patch) and its source ``features_key``. With
    ``features_key``, that feature and the views of it count; otherwise every recorded one does.
    """
    patches: dict[str, float] = {}
    margins: dict[str, float] = {}
    views: dict[str, tuple[str, float]] = {}
    for key, entry in adata.uns.items():
        params = entry.get("params") if isinstance(entry, dict) else None
        if not isinstance(params, dict):
            continue
        size = params.get("patch_size_um")
        if size is not None and np.isfinite(float(size)):
            patches[str(key)] = float(size)
            # resampling (box anti-aliasing, then bilinear) reads up to ~4 pixels of the level used past the
            # patch edge (measured: 1 of 839 train cells changed with a buffer of exactly half the patch)
            mpp = params.get("mpp_used")
            mpps = [float(v) for v in mpp.values()] if isinstance(mpp, dict) else []
            margins[str(key)] = READ_MARGIN_PX * max(mpps) if mpps else 0.0
        scales = params.get("scales")
        if params.get("features_key") is not None and scales is not None and len(scales):
            views[str(key)] = (str(params["features_key"]), float(np.max(scales)))
    if features_key is not None:
        patches = {k: v for k, v in patches.items() if k == features_key}
        views = {k: v for k, v in views.items() if v[0] == features_key}
    reads = {k: v + 2 * margins[k] for k, v in patches.items()}
    for key, (source, scale) in views.items():
        if source in patches:
            reads[key] = patches[source] * scale + 2 * margins[source]
    if not reads:
        return None, None
    key = max(reads, key=reads.get)
    return reads[key], key


def resolve_split_key(adata: ad.AnnData, split_key: str | None) -> str | None:
    """The split a fit should respect: the default ``"split"`` where the table has it (else ``None``: every
    cell), any other name only if it exists."""
    if split_key == SPLIT_KEY and split_key not in adata.obs:
        return None
    if split_key is not None and split_key not in adata.obs:
        raise KeyError(f"No split in obs[{split_key!r}]; run nk.pp.spatial_split or pass split_key=None.")
    return split_key


def split_groups(libraries: np.ndarray, split: np.ndarray | None) -> np.ndarray:
    """Neighbourhood groups ``"library|part"``: no neighbourhood crosses a section or a split part (the
    paper's rule: test cells are described by test cells only). ``split=None``: sections only."""
    libraries = np.asarray(libraries).astype(str)
    if split is None:
        return libraries
    return np.char.add(np.char.add(libraries, "|"), np.asarray(split).astype(str))


def split_fingerprint(adata: ad.AnnData, split_key: str) -> str:
    """A short checksum of the split labels: a fit recorded with one split is not reused with another."""
    import hashlib

    labels = adata.obs[split_key].astype(str).to_numpy().astype("U6")
    return hashlib.sha256(labels.tobytes()).hexdigest()[:16]


def check_split_label(
    adata: ad.AnnData, split_key: str, label: str, *, use: str, argument: str | None = None
) -> None:
    """Refuse a split column without any ``label`` cell, listing the values it holds (``'Train'``, booleans,
    ...) and how to make one nichekd reads (``use``: what the caller does with those cells; ``argument``: the
    argument that picks the label, if any)."""
    counts = adata.obs[split_key].astype(str).value_counts(dropna=False)
    if label in counts.index and counts[label] > 0:
        return
    found = {str(v): int(n) for v, n in counts.items() if n > 0}
    shown = dict(list(found.items())[:10])
    ours = sorted(set(found) & set(SPLIT_LABELS))
    if ours and argument is not None:
        fix = f"pass {argument} one of the labels it holds ({ours})"
    elif ours:
        fix = (
            f"this one has none: redo it with nk.pp.spatial_split(sdata, key_added={split_key!r}, overwrite=True) "
            "(a smaller buffer_um=, another test_strip=)"
        )
    else:
        fix = (
            f"run nk.pp.spatial_split(sdata, key_added={split_key!r}, overwrite=True) to make one, or relabel "
            f"yours to lower-case 'train'/'test'/'buffer' (e.g. obs[{split_key!r}] = obs[{split_key!r}].astype(str)"
            ".str.lower(); for booleans, np.where(is_test, 'test', 'train'))"
        )
    raise ValueError(
        f"No cells with obs[{split_key!r}] == {label!r}: {use} the cells labelled {label!r}, and obs[{split_key!r}] "
        f"holds {shown}{' ...' if len(found) > len(shown) else ''}. nichekd's splits (nk.pp.spatial_split) label "
        f"cells 'train', 'test' and 'buffer': {fix}."
    )


def split_record(adata: ad.AnnData, split_key: str | None) -> dict:
    """What a fit records about the split it respected (``split_fingerprint``, and ``split_cells``: which
    cells it was computed on), for :func:`stale_split`; empty without a split."""
    if split_key is None or split_key not in adata.obs:
        return {}
    return {"split_fingerprint": split_fingerprint(adata, split_key), "split_cells": cells_fingerprint(adata)}


_REFIT = {
    "distill": "nk.tl.distill(sdata, key_added={key!r}, ...)",
    "histology_baseline": "nk.tl.histology_baseline(sdata, key_added={key!r}, ...)",
    "predict_niches": "nk.tl.distill(sdata, ...) and nk.tl.predict_niches(sdata, model, key_added={key!r})",
}


def stale_split(adata: ad.AnnData, key: str, split_key: str) -> str | None:
    """Why ``obs[key]`` (a student's or a baseline's niches) was fitted with another split than today's
    ``obs[split_key]``, or ``None`` when it was not (or nothing says which split it was fitted with).

    ``nk.tl.distill`` and ``nk.tl.histology_baseline`` record the fingerprint of the split they fitted on (and
    ``nk.tl.predict_niches`` the one of the model distill returned) with the cells it was computed on; on
    those same cells, another fingerprint now means the split was redone after the fit: today's held-out cells
    may be cells it was trained on.
    """
    entry = adata.uns.get(key)
    params = latest_params(entry)
    was = params.get("split_fingerprint")
    if was is None or params.get("split_key") != split_key or split_key not in adata.obs:
        return None
    same_cells = params.get("split_cells") == cells_fingerprint(adata)
    if not same_cells or str(was) == split_fingerprint(adata, split_key):
        return None
    writer = written_by(adata, "obs", key) or str(params.get("function") or "distill")
    fix = _REFIT.get(writer, _REFIT["distill"]).format(key=key)
    return (
        f"obs[{key!r}] was fitted with another split than today's obs[{split_key!r}]: the split was redone after "
        f"nk.tl.{writer}, so cells held out now may be cells it was trained on, and its scores would be "
        f"inflated. Re-run {fix} on this split, or evaluate with the split it was trained on (restore that "
        f"obs[{split_key!r}], or pass split_key= a column holding it)."
    )


def warn_features_fitted_on_all(adata: ad.AnnData, keys, split_key: str, stacklevel: int = 3) -> None:
    """Warn about features whose fitted statistics let test cells move training features: a stain reference
    from every cell, or a library z-score of a library that has both test and other cells."""
    split = adata.obs[split_key].astype(str).to_numpy()
    if not (split == "test").any():
        return
    for key in keys:
        entry = adata.uns.get(key)
        params = entry.get("params", {}) if isinstance(entry, dict) else {}
        if params.get("statistics_from") != "all":
            continue
        fitted = list(np.atleast_1d(params.get("fitted_statistics", ["library z-score", "stain reference"])))
        libs = np.asarray(library_labels(adata, params.get("library_key") or LIBRARY_KEY)).astype(str)
        mixed = any((split[libs == lib] == "test").any() and (split[libs == lib] != "test").any()
                    for lib in np.unique(libs))  # fmt: skip
        if "stain reference" in fitted or ("library z-score" in fitted and mixed):
            warnings.warn(
                f"obsm[{key!r}] was standardised or stain-normalised with statistics of every cell, the test "
                "cells included, so test features move training features. Recompute it after the split: "
                f"nk.pp.histology_features(sdata, ..., key_added={key!r}, overwrite=True).",
                UserWarning,
                stacklevel=stacklevel,
            )


def check_split_guards(
    adata: ad.AnnData, split_key: str, *, teacher_key: str | None, features_key: str | None
):
    """Refuse inputs whose reach crosses the recorded split, and warn when the teacher saw the test cells.

    - features or augmented views that read a wider region than the split's gap (computed after the split, or
      with a larger patch) would let train and test patches share pixels: refused, unless the buffer was
      given explicitly (then a warning);
    - a teacher fitted with another split (the split was redone after it): refused;
    - a teacher fitted on every cell while the split has test cells: a warning (its fit saw test expression).
    """
    split = adata.obs[split_key].astype(str).to_numpy()
    if not (split == "test").any():
        return
    split_params = adata.uns.get(split_key, {}).get("params", {}) if split_key in adata.uns else {}
    buffer_um = split_params.get("buffer_um")
    if buffer_um is not None and split_params.get("method", "strips") != "libraries" and features_key:
        read, read_key = _largest_patch(adata, features_key)
        if read is not None and read / 2.0 > float(buffer_um) + 1e-6:
            message = (
                f"obsm[{read_key!r}] reads {read:.4g} um around each cell but the split's buffer is "
                f"{float(buffer_um):.4g} um: train and test patches share pixels (the split was made before "
                f"these features or views). Redo the split: nk.pp.spatial_split(sdata, features_key="
                f"{features_key!r}), then the teacher."
            )
            if split_params.get("buffer_from") != "given":
                raise ValueError(message)
            warnings.warn(message, UserWarning, stacklevel=3)
    if features_key:
        warn_features_fitted_on_all(adata, [features_key], split_key, stacklevel=4)
    entry = adata.uns.get(teacher_key) if teacher_key is not None else None
    params = entry.get("params", {}) if isinstance(entry, dict) else {}
    if not params or params.get("method") == "labels":
        return
    if params.get("split_key") is None:
        warnings.warn(
            f"The teacher {teacher_key!r} was fitted on every cell, the test cells of obs[{split_key!r}] "
            "included: its training targets depend on test expression. For the paper's protocol run "
            "nk.pp.spatial_split before nk.tl.teacher_niches (the teacher then fits outside the test side).",
            UserWarning,
            stacklevel=3,
        )
    elif params.get("split_key") == split_key and params.get("split_fingerprint") not in (
        None,
        split_fingerprint(adata, split_key),
    ):
        raise ValueError(
            f"The teacher {teacher_key!r} was fitted with another split than today's obs[{split_key!r}] (the "
            "split was redone after it): re-run nk.tl.teacher_niches so its targets respect this split."
        )


def block_ids(xy: np.ndarray, n_blocks: int) -> np.ndarray:
    """Flat id ``row * n_blocks + column`` of each point on an ``n_blocks`` x ``n_blocks`` grid of its bounding
    box (one section's points), as the ``"blocks"`` split and the annotation probe's spatial folds use it."""
    lo = xy.min(0)
    hi = np.maximum(xy.max(0), lo + 1e-9)
    cell = np.minimum(((xy - lo) / (hi - lo) * n_blocks).astype(int), n_blocks - 1)
    return cell[:, 1] * n_blocks + cell[:, 0]


def _rect_distance(xy: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest of ``rects`` (rows ``x0, x1, y0, y1``); inf with no rects."""
    if len(rects) == 0:
        return np.full(len(xy), np.inf)
    x, y = xy[:, :1], xy[:, 1:2]
    dx = np.maximum(np.maximum(rects[None, :, 0] - x, 0.0), x - rects[None, :, 1])
    dy = np.maximum(np.maximum(rects[None, :, 2] - y, 0.0), y - rects[None, :, 3])
    return np.sqrt(dx**2 + dy**2).min(1)


def _grid_parts(
    xy: np.ndarray, nx: int, ny: int, test_blocks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One section's cells on an ``nx`` x ``ny`` grid of its bounding box (``test_blocks``: flat ids): whether
    each is test, and the test and train block rectangles (outer edges open: only internal borders count)."""
    lo, hi = xy.min(0), xy.max(0)
    span = np.maximum(hi - lo, 1e-9)
    bx = np.minimum(((xy[:, 0] - lo[0]) / span[0] * nx).astype(int), nx - 1)
    by = np.minimum(((xy[:, 1] - lo[1]) / span[1] * ny).astype(int), ny - 1)
    block = by * nx + bx
    is_test = np.isin(block, test_blocks)
    xe = lo[0] + span[0] * np.arange(nx + 1) / nx
    ye = lo[1] + span[1] * np.arange(ny + 1) / ny
    xe[0], xe[-1], ye[0], ye[-1] = -np.inf, np.inf, -np.inf, np.inf
    ids = np.arange(nx * ny)
    rects = np.stack([xe[ids % nx], xe[ids % nx + 1], ye[ids // nx], ye[ids // nx + 1]], 1)
    return is_test, rects[np.isin(ids, test_blocks)], rects[~np.isin(ids, test_blocks)]


def _border_distance(xy: np.ndarray, is_test: np.ndarray, test_rects: np.ndarray, train_rects: np.ndarray):
    """Each cell's distance to the other side of the split (a test cell's to the train blocks, and back)."""
    return np.where(is_test, _rect_distance(xy, train_rects), _rect_distance(xy, test_rects))


def grid_split(xy: np.ndarray, nx: int, ny: int, test_blocks: np.ndarray, buffer_um: float) -> np.ndarray:
    """Label one section's cells on an ``nx`` x ``ny`` grid of its bounding box; ``test_blocks`` are flat ids."""
    is_test, test_rects, train_rects = _grid_parts(xy, nx, ny, test_blocks)
    labels = np.where(is_test, "test", "train").astype(object)
    if buffer_um > 0:
        dist_other = _border_distance(xy, is_test, test_rects, train_rects)
        labels[dist_other < buffer_um] = "buffer"
    return labels


def _round_down(value: float) -> float:
    """``value`` rounded down to 0.1 (a buffer suggested from a distance must still keep that cell)."""
    return float(np.floor(value * 10.0) / 10.0)


def _empty_part_message(
    part: str,
    xy: np.ndarray,
    layouts: list,
    method: str,
    n_strips: int,
    test_strip: int,
    buffer_um: float,
    buffer_from: str | None,
) -> str:
    """Why the split leaves no ``part`` cells, and values that would leave some: the largest buffer keeping
    one (and ``MIN_PART_CELLS``) of them in this layout, and for strips the most strips that would."""
    dists = []
    for sel, nx, ny, test_blocks in layouts:
        is_test, test_rects, train_rects = _grid_parts(xy[sel], nx, ny, test_blocks)
        mine = is_test if part == "test" else ~is_test
        dists.append(_border_distance(xy[sel], is_test, test_rects, train_rects)[mine])
    d = np.sort(np.concatenate(dists))[::-1] if dists else np.zeros(0)
    given = "" if buffer_from in (None, "given") else f", {buffer_from}"
    tries = []
    if len(d) and d[0] > 0:
        one = _round_down(float(d[0]))
        many = _round_down(float(d[MIN_PART_CELLS - 1])) if len(d) >= MIN_PART_CELLS else None
        keeps = f"buffer_um={one:g} (the largest that keeps {part} cells"
        if many is not None and many > 0:
            keeps += f"; {many:g} keeps {MIN_PART_CELLS} of them"
        tries.append(keeps + ")")
    if method == "strips":
        for n in range(n_strips - 1, 1, -1):
            ts = min(test_strip, n - 1)
            labels = np.concatenate(
                [grid_split(xy[sel], 1, n, np.array([ts]), buffer_um) for sel, *_ in layouts]
            )
            if (labels == "train").any() and (labels == "test").any():
                tries.append(f"n_strips={n}, test_strip={ts} (wider strips, with this buffer)")
                break
        tries.append("method='blocks'")
    else:
        tries.append("a larger test_fraction= or fewer n_blocks=")
    tries.append("method='libraries' with whole held-out sections")
    return (
        f"The split leaves no {part} cells: every {part} cell lies within buffer_um={buffer_um:.4g} um"
        f"{given} of the other side, so it became 'buffer' (the sections are small for this buffer). Try "
        + "; or ".join(tries)
        + ". A buffer below half the patch size lets train and test patches share pixels (distill then refuses "
        "the features unless buffer_um= was given explicitly)."
    )


def _check_spread(xy: np.ndarray, library: str, method: str) -> None:
    """Refuse a section whose observations share one position (or, for strips, one ``y``): no split exists."""
    if len(xy) == 0:
        return
    span = np.ptp(xy, axis=0)
    if span.max() == 0 or (method == "strips" and span[1] == 0):
        where = "one position" if span.max() == 0 else "one y coordinate (a horizontal line)"
        raise ValueError(
            f"All observations of section {library!r} share {where}, so no {method} split of it exists: check "
            "obsm['spatial'] / the coordinates (a reader, a transform or units that collapsed them)"
            + (", or use method='blocks'." if span.max() > 0 else ".")
        )


def _warn_small_parts(
    labels: np.ndarray,
    codes: np.ndarray,
    lib_names: list[str],
    method: str,
    n_strips: int,
    n_blocks: int,
    buffer_um: float | None,
) -> None:
    """Warn when a section's train or test part holds fewer than ``MIN_PART_CELLS`` observations or
    ``MIN_PART_FRACTION`` of the section: models train on little and scores on it are noise."""
    small = []
    if method == "libraries":  # whole sections: the parts are the held-out and the kept sections together
        for part in ("train", "test"):
            k = int((labels == part).sum())
            if k < MIN_PART_CELLS:
                small.append(f"{k} {part} observations in all")
        fix = "hold out (or keep) larger sections, or use method='strips' / 'blocks' within sections."
    else:
        for li, lib in enumerate(lib_names):
            in_lib = labels[codes == li]
            if not len(in_lib):  # an unused category
                continue
            for part in ("train", "test"):
                k = int((in_lib == part).sum())
                if k < MIN_PART_CELLS or k < MIN_PART_FRACTION * len(in_lib):
                    small.append(f"section {lib!r}: {k} {part} of {len(in_lib)}")
        if method == "strips":
            grid = f"fewer strips (n_strips={n_strips}) or another test_strip="
        else:
            grid = f"fewer blocks (n_blocks={n_blocks}) or a larger test_fraction="
        fix = (
            f"use {grid}, a smaller buffer_um= (now {buffer_um:.4g} um; the default is half the patch), or "
            "method='libraries' with whole held-out sections."
        )
    if small:
        warnings.warn(
            f"The split leaves few observations in some parts ({'; '.join(small[:6])}"
            f"{'; ...' if len(small) > 6 else ''}): fewer than {MIN_PART_CELLS} observations or under "
            f"{MIN_PART_FRACTION:.0%} of a section. A student trains on little there and scores on it are "
            f"noise. To fix it, {fix}",
            UserWarning,
            stacklevel=3,
        )


@inject_docs
def spatial_split(
    sdata,
    *,
    method: str = "strips",
    n_strips: int = 4,
    test_strip: int = 1,
    test_libraries: Sequence[str] | None = None,
    n_blocks: int = 4,
    test_fraction: float = 0.25,
    buffer_um: float | None = None,
    features_key: str | None = None,
    teacher_key: str | None = "teacher_niche",
    teacher_guard: str = "widen",
    library_key: str = LIBRARY_KEY,
    key_added: str = "split",
    table_key: str = TABLE_KEY,
    random_state: int = 0,
    copy: bool = False,
    overwrite: bool = False,
) -> ad.AnnData | None:
    """Label cells ``train`` / ``test`` / ``buffer`` so that no tissue is shared across the split.

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` in the standard layout, or its table.
    method
        ``"strips"``: per section, ``n_strips`` horizontal bands of equal height in ``y`` (the paper's
        default); band ``test_strip`` counted from the top (smallest ``y``) is test. ``"blocks"``: per
        section, an ``n_blocks`` x ``n_blocks`` grid; random blocks are test until ``test_fraction`` of the
        cells is reached. ``"libraries"``: whole sections in ``test_libraries`` are test (no buffer needed).
    n_strips, test_strip
        Number of strips and the 0-based index of the test strip from the top.
    test_libraries
        Held-out sections for ``method="libraries"``.
    n_blocks, test_fraction
        Grid size per axis and the share of cells to hold out for ``method="blocks"``.
    buffer_um
        Cells closer than this (microns) to a train/test border become ``"buffer"``, so train and test cells
        are at least ``2 * buffer_um`` apart. Defaults to half the widest image region any feature reads:
        the ``patch_size_um`` recorded by ``histology_features`` (times the largest scale of the views
        recorded by ``augmented_features``) plus the few pixels resampling reads past the patch edge, so no
        train and test patch share a pixel; required when no patch size is known. Use 0 for no buffer.
    features_key
        Features (and their augmented views) whose patch sets the default buffer; default every recorded one.
    teacher_key
        %(teacher_key)s
    teacher_guard
        What to do when the reach of a teacher fitted before the split (radius times ``n_rings``) exceeds
        the gap: ``"widen"`` the buffer to half the reach (default), or ``"within"``: keep the buffer and
        require the teacher to be refitted within each side (``nk.tl.teacher_niches`` after the split does
        that; a warning says so). A teacher fitted before the split still saw the test cells' expression:
        the documented order is split first, then the teacher. Which one
        applied is recorded in ``uns[key_added]['params']['teacher_guard_applied']``.
    library_key
        %(library_key)s
    key_added
        ``obs`` column written (categorical ``train``/``test``/``buffer``); parameters go to ``uns``.
    table_key
        %(table_key)s
    random_state
        %(random_state)s
    copy
        %(copy)s
    overwrite
        %(overwrite)s

    Returns
    -------
    The modified table if ``copy=True``, else ``None``.

    Warns
    -----
    UserWarning
        When a section's train or test part holds fewer than ``MIN_PART_CELLS`` (50) observations or under
        ``MIN_PART_FRACTION`` (5%) of the section; the message names the settings to change.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.synthetic_tissue(n_cells=5000, random_state=0)
    >>> nk.pp.spatial_split(sdata, buffer_um=56)
    >>> sdata.tables["table"].obs["split"].value_counts()
    """
    _val.check_choice("method", method, METHODS)
    _val.check_choice("teacher_guard", teacher_guard, TEACHER_GUARDS)
    n_strips = _val.check_int("n_strips", n_strips, minimum=2, maximum=MAX_STRIPS)
    test_strip = _val.check_int("test_strip", test_strip, minimum=0, maximum=n_strips - 1)
    n_blocks = _val.check_int("n_blocks", n_blocks, minimum=2, maximum=MAX_BLOCKS)
    test_fraction = _val.check_fraction("test_fraction", test_fraction, low_open=True)
    _val.check_optional_nonnegative("buffer_um", buffer_um, unit="microns")
    _val.check_seed("random_state", random_state)
    for name, value in (("features_key", features_key), ("teacher_key", teacher_key)):
        _val.check_key(name, value, optional=True)
    adata = get_table(sdata, table_key)
    # the keys written, checked before anything is computed or written
    written = claim(
        adata, [("obs", key_added), ("uns", key_added)], writer="spatial_split", overwrite=overwrite
    )
    buffer_from = "given" if buffer_um is not None else None
    guard_applied = None
    xy = micron_coords(sdata, table_key=table_key, library_key=library_key)
    if method == "libraries" and library_key not in adata.obs:
        raise KeyError(f"No obs[{library_key!r}] column: held-out sections need a library per cell.")
    libs = library_labels(adata, library_key)
    lib_names = [str(c) for c in libs.categories]
    if method != "libraries":
        if buffer_um is None:
            patch, patch_key = _largest_patch(adata, features_key)
            if patch is None:
                raise ValueError(
                    "buffer_um is required: no histology feature patch size is recorded in uns. Pass "
                    "buffer_um= (half the image patch size in microns, e.g. 56 for 112 um patches)."
                )
            buffer_um = patch / 2.0
            buffer_from = f"half the widest patch read ({patch_key}: {patch:.4g} um)"
        buffer_um, guard_applied = _teacher_guard(adata, float(buffer_um), teacher_key, teacher_guard)
    if method == "libraries":
        if not test_libraries:
            raise ValueError(f"method='libraries' needs test_libraries=, a subset of {lib_names}.")
        test_libraries = [
            str(t) for t in ([test_libraries] if isinstance(test_libraries, str) else test_libraries)
        ]
        missing = sorted(set(test_libraries) - set(lib_names))
        if missing:
            raise KeyError(f"test_libraries {missing} are not in obs[{library_key!r}]; it has {lib_names}.")
        if set(test_libraries) == set(lib_names):
            raise ValueError("All sections are held out; keep at least one section for training.")

    rng = np.random.default_rng(random_state)
    labels = np.empty(adata.n_obs, dtype=object)
    codes = np.asarray(libs.codes)
    layouts = []  # (cells, nx, ny, test blocks) of each section, for the message below
    for li, lib in enumerate(lib_names):
        sel = np.flatnonzero(codes == li)
        if method != "libraries":
            _check_spread(xy[sel], lib, method)
        if method == "libraries":
            labels[sel] = "test" if lib in test_libraries else "train"
        elif method == "strips":
            labels[sel] = grid_split(xy[sel], 1, n_strips, np.array([test_strip]), buffer_um)
            layouts.append((sel, 1, n_strips, np.array([test_strip])))
        else:
            nb = n_blocks * n_blocks
            counts = np.bincount(block_ids(xy[sel], n_blocks), minlength=nb)
            order = rng.permutation(nb)
            reached = np.cumsum(counts[order]) / max(len(sel), 1)
            n_test = int(np.searchsorted(reached, test_fraction) + 1)
            n_test = min(n_test, nb - 1)
            labels[sel] = grid_split(xy[sel], n_blocks, n_blocks, order[:n_test], buffer_um)
            layouts.append((sel, n_blocks, n_blocks, order[:n_test]))
    if not (labels == "train").any() or not (labels == "test").any():
        part = "train" if not (labels == "train").any() else "test"
        if method == "libraries" or not layouts:
            raise ValueError(f"The split leaves no {part} cells.")
        widened = "widened to half the teacher's reach (teacher_guard='widen')"
        how = widened if guard_applied == "widen" else buffer_from
        raise ValueError(_empty_part_message(part, xy, layouts, method, n_strips, test_strip, buffer_um, how))
    _warn_small_parts(labels, codes, lib_names, method, n_strips, n_blocks, buffer_um)

    if copy:
        adata = adata.copy()
    adata.obs[key_added] = pd.Categorical(labels.astype(str), categories=list(SPLIT_LABELS))
    params = {
        "method": method,
        "n_strips": n_strips,
        "test_strip": test_strip,
        "test_libraries": list(test_libraries) if test_libraries else None,
        "n_blocks": n_blocks,
        "test_fraction": test_fraction,
        "buffer_um": None if buffer_um is None else float(buffer_um),
        "buffer_from": "teacher radius" if guard_applied == "widen" else buffer_from,
        "teacher_key": teacher_key,
        "teacher_guard": teacher_guard,
        "teacher_guard_applied": guard_applied,
        "library_key": library_key,
        "random_state": random_state,
    }
    counts = {lab: int((labels == lab).sum()) for lab in SPLIT_LABELS}
    store_params(adata, key_added, params, claim=written, counts=counts)
    warn_features_fitted_on_all(adata, [k for k in adata.uns if k != key_added], key_added)
    return adata if copy else None
