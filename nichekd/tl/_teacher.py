"""Teacher niches from spatial transcriptomics: the targets the H&E student learns."""

from __future__ import annotations

import copy
import inspect
import secrets
import warnings
from collections.abc import Mapping
from typing import Any

import pandas as pd

from .._core.docs import inject_docs
from .._core.keys import LIBRARY_KEY, SPLIT_KEY, TABLE_KEY
from .._core.neighbors import store_spatial_graph
from .._core.records import claim, store_params, written_by
from .._core.runtime import keep_torch_threads
from .._core.spatial import micron_coords
from .._core.table import get_table
from ..models.teacher import NicheTeacher
from ..pp._split import resolve_split_key, split_fingerprint


@inject_docs
@keep_torch_threads()  # scanpy/squidpy's numba kernels reset torch's OpenMP threads
def teacher_niches(
    sdata: Any,
    *,
    n_niches: int | None = None,
    method: str | None = None,
    model: NicheTeacher | Mapping[str, Any] | None = None,
    split_key: str | None = SPLIT_KEY,
    key_added: str = "teacher_niche",
    table_key: str = TABLE_KEY,
    library_key: str = LIBRARY_KEY,
    random_state: int = 0,
    progress: bool = True,
    copy: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> Any:
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
        Number of niches K (``None`` for ``method="labels"``: one niche per label). Required unless ``model``
        sets it.
    method
        ``"aggregate"`` (the default), ``"composition"``, ``"transformer"`` or ``"labels"``.
    model
        The teacher's settings: an unfitted :class:`~nichekd.models.NicheTeacher` (``use_rep``,
        ``cell_type_key``, ``labels_key``, ``radius_um``, ``n_neighbors_target``, ``n_rings``, ``n_comps``,
        ``batch_correct``, ``label_smoothing``, ``calibrate``, ``transformer_kwargs``, ``device``, ...; it is not
        modified) or a dict of its arguments. A **fitted** teacher (e.g. ``NicheTeacher.load(path)``) is not
        refitted: it labels this table's cells (new sections in its label space).
    split_key
        %(split_key)s
        The default ``"split"`` is used when the table has that column (the paper's protocol:
        run :func:`nichekd.pp.spatial_split` first): the teacher is then fitted on the cells outside the test
        side only and every neighbourhood stays within its side, so test labels come from test-only
        neighbourhoods and no training target depends on test expression. Without the column the teacher is
        fitted on every cell (recorded as ``fitted_on="all"``); ``nk.tl.distill`` then warns. Another
        name must exist; ``None`` fits on every cell even when a split exists (transductive).
    key_added
        Results go to ``obs[key_added]``, ``obsm[f"{key_added}_proba"]``, ``obsm[f"{key_added}_logits"]``
        and ``uns[key_added]``.
    table_key
        %(table_key)s
    library_key
        %(library_key)s
    random_state
        %(random_state)s
    progress
        %(progress)s
    copy
        %(copy)s
    overwrite
        %(overwrite)s
        A neighbourhood graph in ``obsp['spatial_connectivities']`` that nichekd did not write (e.g. squidpy's
        ``spatial_neighbors``) is kept without it: the teacher's graph is then not exported (a warning says so).
    **settings
        Deprecated: the teacher's settings (``use_rep=``, ``radius_um=``, ``device=``, ...) and
        ``return_model=`` (use ``model=NicheTeacher(...)``, or ``NicheTeacher(...).fit(table)`` for the object)
        still work, with a FutureWarning.

    Returns
    -------
    ``None`` (or the table with ``copy=True``). Written to the table:

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
    >>> nk.tl.teacher_niches(sdata, n_niches=6, model=nk.models.NicheTeacher(n_rings=2))
    >>> teacher = nk.models.NicheTeacher(6, method="transformer").fit(sdata["table"])  # the model object
    >>> nk.tl.teacher_niches(new_sdata, model=teacher)  # labels new sections in its label space
    """
    data = {"library_key": library_key, "progress": progress, "random_state": random_state}
    teacher, return_model = teacher_settings(model, settings, n_niches=n_niches, method=method, **data)
    prefitted = teacher.is_fitted
    method = teacher.method
    teacher._check_params()  # every numeric and choice option, before the table is read
    adata = get_table(sdata, table_key)
    results = [
        ("obs", key_added),
        ("obsm", f"{key_added}_proba"),
        ("obsm", f"{key_added}_logits"),
        ("uns", key_added),
    ]
    claim(adata, results, writer="teacher_niches", overwrite=overwrite)  # checked again before writing
    xy_um = micron_coords(sdata, table_key=table_key, library_key=library_key)
    # everything is computed before anything is written: a failure leaves the table untouched
    if prefitted:  # a given fitted teacher labels these cells; its own split column where the table has it
        split_key = teacher.split_key if teacher.split_key in adata.obs else None
        inputs = teacher.prepare(adata, xy_um=xy_um)
    else:
        split_key = resolve_split_key(adata, split_key)  # no split yet: every cell (recorded; distill warns)
        teacher.split_key = split_key
        # with split_key the teacher learns from the cells outside the test side only, then labels every cell
        fit_table = teacher.fitting_table(adata)
        fit_xy = (
            xy_um if fit_table is adata else xy_um[(adata.obs[split_key].astype(str) != "test").to_numpy()]
        )
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
    export_graph = inputs.nbrs is not None and (overwrite or not foreign)
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
        # the lists the teacher used: its radius and cap, never across a section or the split
        store_spatial_graph(target, inputs.nbrs)
    target.obs[key_added] = pd.Categorical(teacher.labels_from_proba(proba), categories=teacher.niche_names_)
    target.obsm[f"{key_added}_proba"] = proba
    if logits is not None:
        target.obsm[f"{key_added}_logits"] = logits
    elif f"{key_added}_logits" in target.obsm:  # stale logits of an earlier run would not match
        del target.obsm[f"{key_added}_logits"]
    t = teacher
    params = {
        "method": method,
        "n_niches": t.n_niches,
        "use_rep": t.use_rep,
        "cell_type_key": t.cell_type_key,
        "labels_key": t.labels_key,
        "library_key": library_key,
        "split_key": split_key,
        "fitted_on": "given model" if prefitted else ("all" if split_key is None else "outside test"),
        "split_fingerprint": None if split_key is None or prefitted else split_fingerprint(adata, split_key),
        "radius_um": t.radius_um_,
        "radius_um_given": t.radius_um is not None,
        "n_neighbors_target": t.n_neighbors_target,
        "mean_neighbours": inputs.extra.get("mean_neighbours"),
        "n_rings": t.n_rings,
        "n_comps": t.n_comps if t.use_rep is None and method in ("aggregate", "transformer") else None,
        "batch_correct": t.batch_correct,
        "label_smoothing": t.label_smoothing if method == "labels" else None,
        "calibrate": t.calibrate if method != "labels" else None,
        "temperature": t.temperature_ if method != "labels" else None,
        "random_state": t.random_state,
        "device": t.device if method == "transformer" else None,
        "graph_exported": export_graph,
        # which run this is: a student records it, and evaluate tells when the teacher was re-run since
        "run_id": secrets.token_hex(8),
        # which fitted teacher wrote these labels: the same model applied to new sections keeps its id
        "model_id": t.fit_id_,
    }
    extra: dict[str, Any] = {"niche_names": list(teacher.niche_names_)}
    if method == "labels":
        extra["label_names"] = dict(zip(teacher.niche_names_, teacher.encoder_["labels"], strict=True))
    store_params(target, key_added, params, claim=written, **extra)

    if return_model:  # deprecated (teacher_settings warned)
        return (target, teacher) if copy else teacher
    return target if copy else None


def teacher_settings(
    model: Any, settings: Mapping[str, Any], *, n_niches: int | None, method: str | None, **data: Any
) -> tuple[NicheTeacher, bool]:
    """The teacher ``teacher_niches`` uses and whether the deprecated ``return_model`` was asked for.

    ``model`` (an unfitted or fitted NicheTeacher, a dict of its arguments, or None) is copied, never
    modified; ``n_niches``/``method`` given to the function must agree with it; the deprecated keyword
    settings of ``teacher_niches`` are applied with a FutureWarning.
    """
    settings = dict(settings)
    return_model = bool(settings.pop("return_model", False))
    if model is None:
        model = {}
    if isinstance(model, Mapping):
        model = {**dict(model)}
        if "n_niches" in model and n_niches is None:
            n_niches = model.pop("n_niches")
        model = NicheTeacher(
            model.pop("n_niches", n_niches), **{"method": method or "aggregate", **data, **model}
        )
        if method is not None and model.method != method:
            raise ValueError(f"method={method!r} but model has method={model.method!r}; give one of them.")
    elif isinstance(model, NicheTeacher):
        model = copy.deepcopy(model)
        for name, value in (("n_niches", n_niches), ("method", method)):
            if value is not None and getattr(model, name) is None and not model.is_fitted:
                setattr(model, name, value)
            elif value is not None and getattr(model, name) != value:
                raise ValueError(
                    f"{name}={value!r} but model has {name}={getattr(model, name)!r}; leave {name} unset to use "
                    "the model's."
                )
        if not model.is_fitted:
            for name, value in data.items():  # the function's data-facing arguments
                setattr(model, name, value)
    else:
        raise TypeError(
            f"model must be a nk.models.NicheTeacher or a dict of its arguments, got {type(model).__name__}."
        )
    if settings or return_model:
        given = [*settings, *(["return_model"] if return_model else [])]
        allowed = set(inspect.signature(NicheTeacher).parameters) - {"n_niches", "method", "library_key",
                                                                     "split_key", "random_state", "progress"}  # fmt: skip
        unknown = sorted(set(settings) - allowed)
        if unknown:
            raise TypeError(f"teacher_niches() got unexpected keyword arguments {unknown}.")
        if model.is_fitted and settings:
            raise ValueError(
                f"model is fitted: its settings are fixed, {sorted(settings)} cannot change them."
            )
        warnings.warn(
            f"teacher_niches({', '.join(f'{k}=' for k in given)}) is deprecated: the teacher's settings belong to "
            f"the model, pass model=nk.models.NicheTeacher({', '.join(f'{k}=...' for k in settings)})"
            + (" and use NicheTeacher(...).fit(table) for the fitted object" if return_model else "")
            + ".",
            FutureWarning,
            stacklevel=3,
        )
        for name, value in settings.items():
            setattr(model, name, value)
    if model.n_niches is None and model.method != "labels" and not model.is_fitted:
        raise TypeError(
            "n_niches must be the number of niches K (an integer >= 2), got None; pass n_niches= or "
            "model=NicheTeacher(K) (None only with method='labels')."
        )
    return model, return_model
