"""Teacher niches from spatial transcriptomics: the targets the H&E student learns."""

from __future__ import annotations

import secrets
import warnings
from typing import Any

import anndata as ad
import pandas as pd

from .._core.docs import inject_docs
from .._core.keys import LIBRARY_KEY, SPLIT_KEY, TABLE_KEY
from .._core.neighbors import store_spatial_graph
from .._core.records import claim, store_params, written_by
from .._core.runtime import keep_torch_threads
from .._core.spatial import micron_coords
from .._core.table import get_table, library_labels
from ..models.teacher import DEFAULT_N_NEIGHBORS, NicheTeacher
from ..pp._split import resolve_split_key, split_fingerprint, split_groups


@inject_docs
@keep_torch_threads()  # scanpy/squidpy's numba kernels reset torch's OpenMP threads
def teacher_niches(
    sdata: Any,
    *,
    n_niches: int | None,
    table_key: str = TABLE_KEY,
    method: str = "aggregate",
    use_rep: str | None = None,
    cell_type_key: str | None = None,
    labels_key: str | None = None,
    library_key: str = LIBRARY_KEY,
    split_key: str | None = SPLIT_KEY,
    radius_um: float | None = None,
    n_neighbors_target: float = DEFAULT_N_NEIGHBORS,
    n_rings: int = 1,
    n_comps: int = 30,
    batch_correct: bool = False,
    label_smoothing: float = 0.0,
    calibrate: str | None = None,
    transformer_kwargs: dict | None = None,
    key_added: str = "teacher_niche",
    random_state: int = 0,
    device: str = "auto",
    progress: bool = True,
    return_model: bool = False,
    copy: bool = False,
    overwrite: bool = False,
) -> ad.AnnData | NicheTeacher | tuple[ad.AnnData, NicheTeacher] | None:
    """Find K spatial niches from expression (or any representation) and store them as teacher targets.

    All libraries are fitted jointly, so every section shares one label space. Methods:

    - ``"aggregate"``: a per-cell latent (PCA of log-normalised counts, or ``obsm[use_rep]`` as given, e.g. an
      scVI latent or image features) averaged over each cell's neighbourhood with Gaussian distance weights
      (``n_rings > 1`` concatenates the means of successive hops), then a Gaussian mixture with K components.
    - ``"composition"``: the neighbourhood's cell-type composition (``cell_type_key``: obs categories or an
      obsm of per-spot fractions), Hellinger-transformed, then a Gaussian mixture.
    - ``"transformer"``: a small NOLAN-like transformer over neighbourhood tokens (latent + relative position
      in microns) with a K-prototype head trained self-supervised by balanced (Sinkhorn) swapped prediction.
    - ``"labels"``: an existing obs column (annotation or another tool's niches) as one-hot targets, with
      optional ``label_smoothing``.

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` in the nichekd layout, or its table (:class:`~anndata.AnnData`).
    n_niches
        Number of niches K (``None`` for ``method="labels"``: one niche per label).
    table_key
        %(table_key)s
    method
        ``"aggregate"``, ``"composition"``, ``"transformer"`` or ``"labels"``.
    use_rep
        ``obsm`` key of a per-cell latent used instead of the expression PCA (no normalisation applied).
    cell_type_key
        Cell types for ``"composition"`` (obs column, or obsm key of fractions); see
        :func:`nichekd.pp.cell_types` when none exist.
    labels_key
        ``obs`` column for ``method="labels"``.
    library_key
        %(library_key)s
    split_key
        %(split_key)s
        The default ``"split"`` is used when the table has that column (the paper's protocol:
        run :func:`nichekd.pp.spatial_split` first): the teacher is then fitted on the cells outside the test
        side only and every neighbourhood stays within its side, so test labels come from test-only
        neighbourhoods and no training target depends on test expression. Without the column the teacher is
        fitted on every cell (recorded as ``fitted_on="all"``); ``nk.tl.distill`` then warns. Another
        name must exist; ``None`` fits on every cell even when a split exists (transductive).
    radius_um
        Neighbourhood radius in microns; by default estimated so the mean neighbour count equals
        ``n_neighbors_target`` (the paper's rule). The radius used is stored in ``uns[key_added]``.
    n_neighbors_target
        Target mean number of neighbours when estimating the radius; below the number of cells of the smallest
        section (refused otherwise, before any neighbour list is allocated).
    n_rings
        Hops of neighbourhood means concatenated (CellCharter-style multi-scale context), at most 10.
    n_comps
        PCA components of the expression latent.
    batch_correct
        Centre/scale the latent per library before aggregation (batch-aware teacher).
    label_smoothing
        Smoothing of one-hot targets with ``method="labels"``.
    calibrate
        ``"neighbours"``: soften the logits by one temperature fitted so that each cell's probabilities
        predict its spatial neighbours' niches (argmax unchanged); the temperature is stored in
        ``uns[key_added]['params']['temperature']``. ``None``: raw log posteriors (near one-hot for mixtures).
    transformer_kwargs
        Overrides of the transformer's settings (``n_steps``, ``d_model``, ...).
    key_added
        Results go to ``obs[key_added]``, ``obsm[f"{key_added}_proba"]``, ``obsm[f"{key_added}_logits"]``
        and ``uns[key_added]``.
    random_state
        %(random_state)s
    device
        %(device)s
    progress
        %(progress)s
    return_model
        Also return the fitted :class:`~nichekd.models.NicheTeacher` (to predict on new sections or save it).
    copy
        %(copy)s
    overwrite
        %(overwrite)s
        A neighbourhood graph in ``obsp['spatial_connectivities']`` that nichekd did not write (e.g. squidpy's
        ``spatial_neighbors``) is kept without it: the teacher's graph is then not exported (a warning says so).

    Returns
    -------
    ``None`` (or the table with ``copy=True``); with ``return_model=True`` the fitted teacher, or
    ``(table, teacher)`` when ``copy=True`` too. Written to the table:

    - ``obs[key_added]``: categorical niche ``N0, N1, ...`` (ordered by decreasing size; categories in the
      column order of the probabilities);
    - ``obsm[f"{key_added}_proba"]``: ``(n, K)`` float32 probabilities, rows summing to 1;
    - ``obsm[f"{key_added}_logits"]``: ``(n, K)`` log posteriors / logits (not for ``"labels"``);
    - ``obsp['spatial_connectivities']`` / ``obsp['spatial_distances']``: the neighbourhood graph at the
      teacher's radius (squidpy's keys, microns), never across libraries;
    - ``uns[key_added]``: ``params`` (method, K, radius, seed, versions, ...) and ``niche_names``
      (plus ``label_names`` for ``"labels"``: the source label of each niche).

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.synthetic_tissue(n_cells=5000, random_state=0)
    >>> nk.tl.teacher_niches(sdata, n_niches=6)
    >>> sdata["table"].obs["teacher_niche"].value_counts()
    >>> teacher = nk.tl.teacher_niches(sdata, n_niches=6, method="transformer", return_model=True)
    >>> teacher.save("teacher/")
    """
    teacher = NicheTeacher(
        n_niches,
        method=method,
        use_rep=use_rep,
        cell_type_key=cell_type_key,
        labels_key=labels_key,
        library_key=library_key,
        split_key=None,  # resolved against the table below
        radius_um=radius_um,
        n_neighbors_target=n_neighbors_target,
        n_rings=n_rings,
        n_comps=n_comps,
        batch_correct=batch_correct,
        label_smoothing=label_smoothing,
        calibrate=calibrate,
        transformer_kwargs=transformer_kwargs,
        random_state=random_state,
        device=device,
        progress=progress,
    )
    teacher._check_params()  # every numeric and choice option, before the table is read
    adata = get_table(sdata, table_key)
    results = [
        ("obs", key_added),
        ("obsm", f"{key_added}_proba"),
        ("obsm", f"{key_added}_logits"),
        ("uns", key_added),
    ]
    claim(adata, results, writer="teacher_niches", overwrite=overwrite)  # checked again before writing
    split_key = resolve_split_key(adata, split_key)  # no split yet: every cell (recorded; distill warns)
    teacher.split_key = split_key
    # everything is computed before anything is written: a failure leaves the table untouched
    # with split_key the teacher learns from the cells outside the test side only, then labels every cell
    xy_um = micron_coords(sdata, table_key=table_key, library_key=library_key)
    fit_table = teacher.fitting_table(adata)
    fit_xy = xy_um if fit_table is adata else xy_um[(adata.obs[split_key].astype(str) != "test").to_numpy()]
    fit_inputs = teacher.prepare(fit_table, fit=True, xy_um=fit_xy)
    teacher.fit_head(fit_inputs)
    inputs = fit_inputs if fit_table is adata else teacher.prepare(adata, xy_um=xy_um)
    logits = teacher.logits_from_inputs(inputs)
    proba = teacher.proba_from_inputs(inputs)

    # squidpy's keys: a graph the user built (squidpy) is kept unless overwrite=True; a squidpy record in
    # uns['spatial_neighbors'] (no units) also means the graph was rebuilt since an earlier teacher run
    graph = [("obsp", "spatial_connectivities"), ("obsp", "spatial_distances"), ("uns", "spatial_neighbors")]
    nbrs = adata.uns.get("spatial_neighbors")
    rebuilt = isinstance(nbrs, dict) and (nbrs.get("params") or {}).get("units") != "micrometer"
    foreign = [
        f"{s}[{k!r}]"
        for s, k in graph
        if k in getattr(adata, s) and (rebuilt or written_by(adata, s, k) != "teacher_niches")
    ]
    export_graph = teacher.radius_um_ is not None and (overwrite or not foreign)
    if teacher.radius_um_ is not None and not export_graph:
        warnings.warn(
            f"{' / '.join(foreign)} hold a neighbourhood graph nichekd did not write (e.g. squidpy's "
            "spatial_neighbors): kept, so the teacher's graph (radius "
            f"{teacher.radius_um_:.4g} um) is not exported. Pass overwrite=True to replace it with the teacher's.",
            UserWarning,
            stacklevel=3,
        )
    written = claim(
        adata, results + (graph if export_graph else []), writer="teacher_niches", overwrite=overwrite
    )

    target = adata.copy() if copy else adata
    if export_graph:  # the teacher's neighbourhoods as squidpy's graph, for scverse tools
        # the graph the teacher used: never across a section or the split
        split = None if split_key is None else adata.obs[split_key].astype(str).to_numpy()
        store_spatial_graph(
            target, xy_um, teacher.radius_um_, split_groups(library_labels(adata, library_key), split)
        )
    target.obs[key_added] = pd.Categorical(teacher.labels_from_proba(proba), categories=teacher.niche_names_)
    target.obsm[f"{key_added}_proba"] = proba
    if logits is not None:
        target.obsm[f"{key_added}_logits"] = logits
    elif f"{key_added}_logits" in target.obsm:  # stale logits of an earlier run would not match
        del target.obsm[f"{key_added}_logits"]
    params = {
        "method": method,
        "n_niches": teacher.n_niches,
        "use_rep": use_rep,
        "cell_type_key": cell_type_key,
        "labels_key": labels_key,
        "library_key": library_key,
        "split_key": split_key,
        "fitted_on": "all" if split_key is None else "outside test",
        "split_fingerprint": None if split_key is None else split_fingerprint(adata, split_key),
        "radius_um": teacher.radius_um_,
        "radius_um_given": radius_um is not None,
        "n_neighbors_target": n_neighbors_target,
        "mean_neighbours": inputs.extra.get("mean_neighbours"),
        "n_rings": n_rings,
        "n_comps": n_comps if use_rep is None and method in ("aggregate", "transformer") else None,
        "batch_correct": batch_correct,
        "label_smoothing": label_smoothing if method == "labels" else None,
        "calibrate": calibrate if method != "labels" else None,
        "temperature": teacher.temperature_ if method != "labels" else None,
        "random_state": random_state,
        "device": device if method == "transformer" else None,
        "graph_exported": export_graph,
        # which run this is: a student records it, and evaluate tells when the teacher was re-run since
        "run_id": secrets.token_hex(8),
    }
    extra: dict[str, Any] = {"niche_names": list(teacher.niche_names_)}
    if method == "labels":
        extra["label_names"] = dict(zip(teacher.niche_names_, teacher.encoder_["labels"], strict=True))
    store_params(target, key_added, params, claim=written, **extra)

    if return_model:
        return (target, teacher) if copy else teacher
    return target if copy else None
