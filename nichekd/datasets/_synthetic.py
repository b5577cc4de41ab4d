"""``synthetic_tissue``: the embedded default data, a seeded simulator with known niches."""

from __future__ import annotations

import re
from numbers import Integral, Real
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd

from .._core.keys import TABLE_KEY
from ..io._build import build_library
from ._artifacts import FIXATION_SHARE, concat_shapes, fixation_nuclei, make_nuisance, red_blood_cells
from ._cell_types import draw_cell_types, draw_nuclei, make_cell_types
from ._expression import MEAN_COUNTS_PER_CELL, THETA, make_expression_model, simulate_counts
from ._he_render import render_he
from ._niche_fields import simulate_geometry, smooth_field
from ._spots import SPOT_DIAMETER_UM, SPOT_PITCH_UM, assign_cells, hex_spot_centres, keep_spots

CELL_DIAMETER_UM = 10.0
GENERATOR_VERSION = 2
MIN_CELLS = {"cell": 50, "spot": 500}
# Stroma eosin: a niche shifts it by at most this much around STROMA_EOSIN, under noise of similar size.
STROMA_EOSIN, STROMA_NICHE_SHIFT, STROMA_NOISE = 0.5, 0.06, 0.06
# Nuisance strengths beyond these no longer look like a usable slide.
MAX_NUISANCE = {"stain_variation": 1.0, "artifacts": 3.0}


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bound}, got {value}.")
    return int(value)


def _validate(
    n_cells,
    n_niches,
    n_cell_types,
    n_genes,
    mode,
    mpp,
    max_image_pixels,
    library_id,
    seed,
    stain_variation,
    artifacts,
):
    if mode not in MIN_CELLS:
        raise ValueError(f"mode must be 'cell' (Xenium-like) or 'spot' (Visium-like), got {mode!r}.")
    n_cells = _check_int("n_cells", n_cells, MIN_CELLS[mode])
    n_niches = _check_int("n_niches", n_niches, 2, 50)
    n_cell_types = n_niches + 3 if n_cell_types is None else _check_int("n_cell_types", n_cell_types, 2, 200)
    n_genes = _check_int("n_genes", n_genes, 10)
    if isinstance(mpp, bool) or not isinstance(mpp, Real) or not np.isfinite(mpp) or not 0 < mpp <= 50:
        raise ValueError(
            f"mpp (microns per pixel of the H&E image) must be in (0, 50], got {mpp!r}; 0.5 is 20x."
        )
    max_image_pixels = _check_int("max_image_pixels", max_image_pixels, 256 * 256)
    if not isinstance(library_id, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", library_id):
        raise ValueError(
            f"library_id must be a non-empty string of letters, digits, '_', '-' or '.', got {library_id!r}."
        )
    seed = _check_int("random_state", seed, 0)
    for name, value in (("stain_variation", stain_variation), ("artifacts", artifacts)):
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= MAX_NUISANCE[name]:
            raise ValueError(
                f"{name} must be a number in [0, {MAX_NUISANCE[name]}] (0 disables it), got {value!r}."
            )
    return n_cells, n_niches, n_cell_types, n_genes, float(mpp), max_image_pixels, seed


def _image_mpp(width_um: float, height_um: float, mpp: float, max_pixels: int) -> float:
    """``mpp``, or the finest coarser resolution whose image has at most ``max_pixels`` pixels."""
    out = max(mpp, float(np.sqrt(width_um * height_um / max_pixels)))
    while np.ceil(width_um / out) * np.ceil(height_um / out) > max_pixels:
        out *= 1.01
    return out


def _fractions(labels: np.ndarray, names: list[str], membership, index: pd.Index) -> pd.DataFrame:
    onehot = np.zeros((len(labels), len(names)), dtype=np.float32)
    onehot[np.arange(len(labels)), labels] = 1.0
    sums = np.asarray(membership @ onehot, dtype=np.float64)
    return pd.DataFrame(sums / sums.sum(1, keepdims=True), index=index, columns=pd.Index(names))


def synthetic_tissue(
    n_cells: int = 20_000,
    *,
    n_niches: int = 5,
    n_cell_types: int | None = None,
    n_genes: int = 200,
    mode: Literal["cell", "spot"] = "cell",
    mpp: float = 0.5,
    image: bool = True,
    max_image_pixels: int = 50_000_000,
    library_id: str = "synthetic",
    stain_variation: float = 0.0,
    artifacts: float = 0.0,
    random_state: int = 0,
    progress: bool = True,
):
    """Simulate a tissue section with known niches, counts and an H&E-like image.

    ``n_niches`` ground-truth niches are smooth irregular regions (a wavy layered band, compact islands and
    patches). Each niche draws its cells' types from its own composition; niches share their dominant types in
    different proportions. Counts are negative binomial from cell-type profiles times niche-specific programs.
    On the H&E image nucleus size, shape and hematoxylin density depend on the cell type (with within-type
    noise; several types look alike) and the stroma eosin depends only weakly and noisily on the niche, so
    one cell's appearance is ambiguous while the composition of its neighbourhood identifies the niche.

    The slide also carries the nuisance of real H&E, drawn independently of the niches
    (:mod:`nichekd.datasets._artifacts`): smooth hematoxylin and eosin intensity fields plus a section-wide
    stain gradient, section thickness, fixation-dependent nuclear size (``stain_variation``), and scanner
    vignetting per 500 um camera field, out-of-focus regions, tissue folds, tears and haemorrhage with red
    blood cells (``artifacts``). As on real slides they are large directions of image-feature variance
    unrelated to the niches: clustering image features picks them up, a student supervised by the teacher
    learns to ignore them.

    Cells are packed at about one per 110-190 um^2 (the density varies by niche); the section size follows
    from ``n_cells``. Every random stream is derived from ``random_state``: cells, types and counts do not depend
    on ``mode``, ``image`` or ``mpp``, so ``mode="spot"`` aggregates exactly the cells of ``mode="cell"``.

    Parameters
    ----------
    n_cells
        Number of cells in the section (also in spot mode, where spots sum the cells beneath them).
    n_niches
        Number of ground-truth niches.
    n_cell_types
        Number of cell types; default ``n_niches + 3``.
    n_genes
        Number of genes (panel size).
    mode
        ``"cell"``: one observation per cell (Xenium-like, circles of 10 um). ``"spot"``: Visium-like 55 um
        spots on a 100 um hexagonal grid, each summing the counts of the cells whose centre lies inside it;
        spots whose centre is off the tissue or that hold no cell are dropped.
    mpp
        Microns per pixel of the H&E image (0.5 is a 20x scan).
    image
        Render the H&E image; ``False`` skips it (much faster for large ``n_cells``).
    max_image_pixels
        Cap on the image size. When the section at ``mpp`` would exceed it, the image is rendered at the
        coarser resolution that fits; the resolution actually used is in the library record and in
        ``uns['synthetic']['image_mpp']`` (``image_downscaled`` is then ``True``).
    library_id
        Section id: names the elements (``{library_id}_he``, ``{library_id}_cells``/``_spots``) and the
        coordinate system (microns).
    stain_variation
        Log-scale standard deviation of the smooth hematoxylin and eosin intensity fields (each also drifts by
        this much across the section); thickness varies by 0.7 and nuclear size (fixation) by 0.4 of it.
        ``0`` (default) disables all three. Off by default: the niches here show mostly through stain
        intensities (hematoxylin density of the cell types, stroma eosin), so ``0.15`` or more lowers a
        supervised student on colour features (``stain`` encoder) as much as the clustering baselines, and
        the student no longer generalises across a spatial split; use it to test stain robustness
        (``nk.pp.augmented_features``, per-section z-scores).
    artifacts
        Strength of slide-handling and scanning artifacts (default ``0``: a clean slide; ``1.5`` gives a
        realistically messy one, on which the student's lead over the baselines grows on average but varies
        more between seeds — see ``tests/test_distill_quality.py``). At ``1``, about 15% of the area
        is out of focus (Gaussian blur of 1.5 um), 5% is haemorrhage with red blood cells, folds (doubled
        tissue, 40 um wide) and tears (7 um cracks) come at 0.4 per mm^2 each (at least one of each), and
        camera fields vignette by up to 8%. Areas and rates scale with it; ``0`` disables all of them.
    random_state
        Seed of every random draw: the same seed gives identical counts, coordinates and image.
    progress
        Show progress bars for large sections.

    Returns
    -------
    SpatialData in the standard layout (:func:`nichekd.io._build.build_library`), with ground truth in the
    table: ``obs['true_niche']`` and ``obs['cell_type']`` (categorical; in spot mode the majority type);
    spot mode adds ``obs['n_cells']``, ``obsm['cell_type_fractions']`` and ``obsm['niche_fractions']``
    (DataFrames, rows sum to 1). ``var`` marks marker genes (``marker_of``) and niche programs
    (``niche_program``). Generation parameters are in ``uns['synthetic']``.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.synthetic_tissue(5_000, n_niches=4, random_state=1)
    >>> table = sdata.tables["table"]
    >>> table.obs["true_niche"].value_counts()  # doctest: +SKIP
    >>> spots = nk.datasets.synthetic_tissue(20_000, mode="spot", image=False)
    >>> spots.tables["table"].obsm["cell_type_fractions"].head()  # doctest: +SKIP
    """
    n_cells, n_niches, n_types, n_genes, mpp, max_image_pixels, seed = _validate(
        n_cells,
        n_niches,
        n_cell_types,
        n_genes,
        mode,
        mpp,
        max_image_pixels,
        library_id,
        random_state,
        stain_variation,
        artifacts,
    )
    geom_ss, types_ss, expr_ss, image_ss = np.random.SeedSequence(seed).spawn(4)
    geom = simulate_geometry(np.random.default_rng(geom_ss), n_cells, n_niches)
    rng_types = np.random.default_rng(types_ss)
    types = make_cell_types(rng_types, n_types, n_niches)
    cell_type = draw_cell_types(rng_types, types, geom.niche)
    nuclei = draw_nuclei(rng_types, types, cell_type)
    model = make_expression_model(np.random.default_rng(expr_ss), n_genes, n_types, n_niches)
    counts = simulate_counts(
        np.random.default_rng(expr_ss.spawn(1)[0]), model, cell_type, geom.niche, progress=progress
    )
    niche_names = [f"niche_{k}" for k in range(n_niches)]
    var = model.var(types.names, niche_names)

    if mode == "cell":
        obs = pd.DataFrame(index=pd.Index([f"cell_{i}" for i in range(n_cells)]))
        obs["true_niche"] = pd.Categorical.from_codes(geom.niche, categories=niche_names)
        obs["cell_type"] = pd.Categorical.from_codes(cell_type, categories=types.names)
        adata = ad.AnnData(X=counts, obs=obs, var=var)
        xy, diameter, technology = geom.xy, CELL_DIAMETER_UM, "synthetic (xenium-like cells)"
    else:
        spots = assign_cells(geom.xy, hex_spot_centres(geom.width_um, geom.height_um))
        on_tissue = geom.tissue_score(spots.centres[:, 0], spots.centres[:, 1]) >= geom.threshold
        spots = keep_spots(spots, on_tissue & (spots.n_cells > 0))
        if len(spots.centres) == 0:
            raise ValueError(f"No spot covers any of the {n_cells} cells; increase n_cells.")
        index = pd.Index([f"spot_{i}" for i in range(len(spots.centres))])
        type_frac = _fractions(cell_type, types.names, spots.membership, index)
        niche_frac = _fractions(geom.niche, niche_names, spots.membership, index)
        obs = pd.DataFrame(index=index)
        # majority labels; ties go to the first category
        obs["true_niche"] = pd.Categorical.from_codes(niche_frac.to_numpy().argmax(1), categories=niche_names)
        obs["cell_type"] = pd.Categorical.from_codes(type_frac.to_numpy().argmax(1), categories=types.names)
        obs["n_cells"] = spots.n_cells
        adata = ad.AnnData(X=spots.aggregate(counts).tocsr().astype(np.float32), obs=obs, var=var)
        adata.obsm["cell_type_fractions"] = type_frac
        adata.obsm["niche_fractions"] = niche_frac
        xy, diameter, technology = spots.centres, SPOT_DIAMETER_UM, "synthetic (visium-like spots)"

    he, image_mpp = None, float("nan")
    if image:
        image_mpp = _image_mpp(geom.width_um, geom.height_um, mpp, max_image_pixels)
        rng_image = np.random.default_rng(image_ss.spawn(1)[0])
        shift = rng_image.uniform(-STROMA_NICHE_SHIFT, STROMA_NICHE_SHIFT, size=n_niches)
        noise = smooth_field(rng_image, geom.width_um, geom.height_um, 60.0)

        def tissue(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return np.clip((geom.tissue_score(x, y) - geom.threshold) / 0.04 + 0.75, 0, 1)

        def stroma_eosin(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return STROMA_EOSIN + shift[geom.niche_at(x, y)] + STROMA_NOISE * noise.at(x, y)

        length = geom.niche_length_um
        nuisance = make_nuisance(
            rng_image,
            geom.width_um,
            geom.height_um,
            length,
            stain_variation=stain_variation,
            artifacts=artifacts,
        )
        shapes = fixation_nuclei(rng_image, nuclei, geom.xy, length, FIXATION_SHARE * stain_variation)
        rbc_xy, rbc = red_blood_cells(
            rng_image,
            geom.width_um,
            geom.height_um,
            length,
            lambda x, y: geom.tissue_score(x, y) >= geom.threshold,
            artifacts,
        )
        he = render_he(
            np.concatenate([geom.xy, rbc_xy]),
            concat_shapes(shapes, rbc),
            geom.width_um,
            geom.height_um,
            image_mpp,
            tissue=tissue,
            stroma_eosin=stroma_eosin,
            seed=image_ss,
            nuisance=nuisance,
            progress=progress,
        )

    sdata = build_library(
        adata,
        library=library_id,
        xy_um=xy,
        diameter_um=diameter,
        kind=mode,
        technology=technology,
        image=he,
        mpp=image_mpp if image else None,
    )
    table = sdata.tables[TABLE_KEY]
    table.uns["synthetic"] = {
        "generator_version": GENERATOR_VERSION,
        "random_state": seed,
        "mode": mode,
        "n_cells": n_cells,
        "n_obs": int(table.n_obs),
        "n_niches": n_niches,
        "n_cell_types": n_types,
        "n_genes": n_genes,
        "niches": niche_names,
        "cell_types": list(types.names),
        "niche_composition": types.composition.tolist(),
        "niche_cell_area_um2": geom.cell_area_um2.tolist(),
        "tissue_size_um": [geom.width_um, geom.height_um],
        "niche_length_um": geom.niche_length_um,
        "cell_diameter_um": CELL_DIAMETER_UM,
        "spot_diameter_um": SPOT_DIAMETER_UM,
        "spot_pitch_um": SPOT_PITCH_UM,
        "mean_counts_per_cell": MEAN_COUNTS_PER_CELL,
        "nb_theta": THETA,
        "image": bool(image),
        "mpp_requested": mpp,
        "image_mpp": image_mpp,
        "image_downscaled": bool(image and image_mpp > mpp),
        "max_image_pixels": max_image_pixels,
        "stain_variation": float(stain_variation),
        "artifacts": float(artifacts),
        "library_id": library_id,
    }
    return sdata
