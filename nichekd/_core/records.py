"""Provenance records in ``uns``: what each function stores about a run and how it is read back."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anndata as ad
import numpy as np

from .runtime import versions
from .validate import NAME_RULE, invalid_name

# anndata cannot write None: a record lists the keys whose value was None under this key instead
UNSET_KEY = "unset"


def uns_safe(value: Any) -> Any:
    """Plain containers anndata can write; None values of a mapping are listed under ``UNSET_KEY``."""
    if isinstance(value, Mapping):
        out = {str(k): uns_safe(v) for k, v in value.items() if v is not None and k != UNSET_KEY}
        listed = value.get(UNSET_KEY)
        listed = [] if listed is None else [str(k) for k in np.atleast_1d(listed)]
        unset = sorted({str(k) for k, v in value.items() if v is None} | set(listed))
        if unset:
            out[UNSET_KEY] = unset
        return out
    if isinstance(value, tuple | list):
        return [uns_safe(v) for v in value if v is not None]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_params(record: Any) -> dict[str, Any]:
    """A ``params`` record as written by :func:`store_params`, with the keys listed as unset back to None.

    Examples
    --------
    >>> read_params({"backbone": "stain", "unset": ["standardize"]})
    {'backbone': 'stain', 'standardize': None}
    """
    if not isinstance(record, Mapping):
        return {}
    out = {str(k): v for k, v in record.items() if k != UNSET_KEY}
    unset = record.get(UNSET_KEY)
    for k in [] if unset is None else list(np.atleast_1d(unset)):
        out.setdefault(str(k), None)
    return out


def latest_params(entry: Any) -> dict[str, Any]:
    """The params of the latest run recorded in a ``uns`` entry (:func:`store_run`'s ``runs``), else its
    ``params`` (:func:`store_params`), with unset keys back to None; empty when there is no record."""
    if not isinstance(entry, Mapping):
        return {}
    runs = entry.get("runs")
    if isinstance(runs, Mapping) and runs:
        last = runs[max(runs, key=lambda r: int(str(r)[3:]) if str(r)[3:].isdigit() else -1)]
        if isinstance(last, Mapping):
            return read_params(last.get("params"))
    return read_params(entry.get("params"))


def store_params(
    adata: ad.AnnData, key_added: str, params: Mapping[str, Any], *, claim: Claim | None = None, **extra: Any
) -> None:
    """Write ``uns[key_added] = {'params': ..., **extra}`` with versions and a timestamp.

    Settings equal to None are kept: their names are listed in ``params['unset']`` (anndata cannot write
    None), so that a later comparison sees them; :func:`read_params` restores them. With ``claim`` (from
    :func:`claim`, checked before the run wrote anything), the params list what the run replaced and the
    claimed keys are recorded as the writer's: call it last.
    """
    record = dict(params)
    if claim is not None:
        record.update(claim.provenance())
    record["versions"] = versions()
    record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    adata.uns[key_added] = uns_safe({"params": record, **extra})
    if claim is not None:
        claim.record(adata)


def store_run(
    adata: ad.AnnData, key_added: str, params: Mapping[str, Any], *, claim: Claim | None = None
) -> str:
    """Add one run's record to ``uns[key_added]['runs']`` (keeping every earlier run and the key's
    ``params``); the first writer of the key also sets ``params``. Returns the run's name (``run0``, ...).
    ``claim`` as in :func:`store_params`."""
    record = dict(params)
    if claim is not None:
        record.update(claim.provenance())
    record["versions"] = versions()
    record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    entry = adata.uns.get(key_added)
    entry = dict(entry) if isinstance(entry, Mapping) else {}
    runs = dict(entry.get("runs", {}))
    name = f"run{len(runs)}"
    runs[name] = {"params": record}
    entry["runs"] = runs
    entry.setdefault("params", record)
    adata.uns[key_added] = uns_safe(entry)
    if claim is not None:
        claim.record(adata)
    return name


# ---------------------------------------------------------------------------------------------------------------
# the write policy: who wrote each result key, and which keys a function may replace

# ownership: uns[OWNERSHIP_KEY]['writers'][slot][key] = function (a table), or
# sdata.attrs[OWNERSHIP_KEY]['writers'][kind][name] = function (SpatialData elements)
OWNERSHIP_KEY = "nichekd"
TABLE_SLOTS = ("obs", "obsm", "obsp", "layers", "uns", "var", "varm", "X")
ELEMENT_SLOTS = ("tables", "shapes", "images", "labels", "points")
# set_units' entry: uns['spatial'][library]['scalefactors']['microns_per_pixel'], keyed by library
SCALE_SLOT = "scalefactors"
# twins that write the same results (each may replace the other's)
WRITER_ALIASES = {"histology_features_dask": "histology_features", "predict_niches_dask": "predict_niches"}
NAMESPACE = {
    "spatial_split": "pp", "cell_types": "pp", "histology_features": "pp", "augmented_features": "pp",
    "scvi_latent": "pp", "aggregate_bins": "pp", "tissue_mask": "pp", "set_units": "pp",
    "teacher_niches": "tl", "distill": "tl", "predict_niches": "tl", "histology_baseline": "tl",
    "annotation_probe": "tl",
}  # fmt: skip
_WHAT = {
    "teacher_niches": "teacher niches", "distill": "predictions", "predict_niches": "predictions",
    "histology_baseline": "baseline niches", "spatial_split": "the split", "cell_types": "cell-type clusters",
    "histology_features": "histology features", "augmented_features": "augmented views",
    "scvi_latent": "an scVI latent", "annotation_probe": "probe results", "aggregate_bins": "aggregated bins",
    "tissue_mask": "a tissue mask", "set_units": "a scale",
}  # fmt: skip
# the user's own data that every function reads: never taken for a result, whatever a record says
CORE = {
    ("obs", "library"): "the section of each observation",
    ("obs", "region"): "the element each row annotates",
    ("obs", "instance_id"): "the row's instance in its element",
    ("obsm", "spatial"): "the coordinates",
    ("layers", "counts"): "the raw counts",
    ("X", "X"): "the expression matrix",
    ("uns", "spatial"): "the images and scale factors",
}
# a result's default key (when uns[key]['params'] exists but names no function: stores older than the records)
DEFAULT_KEYS = {
    "teacher_niche": "teacher_niches", "student_niche": "distill", "split": "spatial_split",
    "cell_type": "cell_types", "X_scVI": "scvi_latent", "annotation_probe": "annotation_probe",
    "aggregate_bins": "aggregate_bins", "he_leiden_niche": "histology_baseline",
    "he_kmeans_niche": "histology_baseline", "he_teacher_niche": "histology_baseline",
}  # fmt: skip
# a params entry only one function writes (older stores); checked in this order
_SIGNATURES = (
    ("radius_um_given", "teacher_niches"), ("teacher_source", "distill"), ("n_found", "histology_baseline"),
    ("teacher_guard", "spatial_split"), ("backbone", "histology_features"), ("scvi_tools", "scvi_latent"),
    ("annotation_key", "annotation_probe"), ("source_table", "aggregate_bins"),
)  # fmt: skip
# what each function writes beside its key (slot, suffix): a legacy record covers these only
_FAMILY = {
    "teacher_niches": {("obs", ""), ("obsm", "_proba"), ("obsm", "_logits"), ("uns", "")},
    "distill": {("obs", ""), ("obs", "_entropy"), ("obsm", "_proba"), ("uns", "")},
    "predict_niches": {("obs", ""), ("obs", "_entropy"), ("obsm", "_proba"), ("uns", "")},
    "histology_baseline": {("obs", ""), ("uns", "")},
    "spatial_split": {("obs", ""), ("uns", "")},
    "cell_types": {("obs", ""), ("uns", "")},
    "histology_features": {("obsm", ""), ("uns", "")},
    "augmented_features": {("obsm", ""), ("uns", "")},
    "scvi_latent": {("obsm", ""), ("uns", "")},
    "annotation_probe": {("uns", "")},
    "aggregate_bins": {("uns", "")},
}
_GRAPH_SUFFIXES = ("_connectivities", "_distances")
_KIND = {"tables": "table", "shapes": "shapes", "images": "image", "labels": "labels", "points": "points"}


def _is_table(obj: Any) -> bool:
    return isinstance(obj, ad.AnnData)


def _where(slot: str, key: str) -> str:
    if slot == "X":
        return "X"
    if slot == SCALE_SLOT:
        return f"uns['spatial'][{key!r}]['scalefactors']['microns_per_pixel']"
    if slot in ELEMENT_SLOTS:
        return f"the {_KIND[slot]} element {key!r}"
    return f"{slot}[{key!r}]"


def _func(writer: str) -> str:
    return f"nk.{NAMESPACE.get(writer, 'tl')}.{writer}"


def _holds(obj: Any, slot: str, key: str) -> bool:
    """Whether ``obj`` already has something at ``slot``/``key``."""
    if slot == "X":
        return getattr(obj, "X", None) is not None
    if slot in ("obs", "var"):
        return key in getattr(obj, slot).columns
    if slot == SCALE_SLOT:
        entry = (obj.uns.get("spatial") or {}).get(key)
        scales = entry.get("scalefactors") if isinstance(entry, Mapping) else None
        return isinstance(scales, Mapping) and "microns_per_pixel" in scales
    return key in getattr(obj, slot)


def _attrs(obj: Any) -> Any:
    """Where ``obj`` keeps its ownership record: a table's ``uns``, a SpatialData object's ``attrs``."""
    return obj.uns if _is_table(obj) else obj.attrs


def _records(obj: Any) -> dict[str, dict[str, str]]:
    entry = _attrs(obj).get(OWNERSHIP_KEY)
    writers = entry.get("writers") if isinstance(entry, Mapping) else None
    if not isinstance(writers, Mapping):
        return {}
    return {str(s): {str(k): str(v) for k, v in keys.items()} for s, keys in writers.items()
            if isinstance(keys, Mapping)}  # fmt: skip


def _never(obj: Any, slot: str, key: str) -> str | None:
    """Why ``slot``/``key`` can never be written, even with ``overwrite=True`` (None: it can)."""
    if _is_table(obj):
        attrs = obj.uns.get("spatialdata_attrs") or {}
        for name, what in (("region_key", "region"), ("instance_key", "instance")):
            if slot == "obs" and key == attrs.get(name):
                return (
                    f"obs[{key!r}] is the table's {what} key, which spatialdata needs to link each row to its "
                    "element: it is never replaced, even with overwrite=True."
                )
        if slot == "uns" and key in ("spatialdata_attrs", OWNERSHIP_KEY):
            return f"uns[{key!r}] is {'spatialdata' if key != OWNERSHIP_KEY else 'nichekd'}'s own record of the table."
        return None
    if slot in ELEMENT_SLOTS:
        for kind in ELEMENT_SLOTS:
            if kind != slot and key in getattr(obj, kind, {}):
                return f"{key!r} is already a {_KIND[kind]} element (spatialdata needs unique element names)."
    return None


def _recorded_function(entry: Any, record_key: str) -> str | None:
    """The function a ``uns`` entry was written by, from its own fields (stores older than the records)."""
    if not isinstance(entry, Mapping):
        return None
    runs = entry.get("runs")
    if isinstance(runs, Mapping) and runs:
        last = runs[max(runs, key=lambda r: int(str(r)[3:]) if str(r)[3:].isdigit() else -1)]
        fn = last.get("params", {}).get("function") if isinstance(last, Mapping) else None
        if isinstance(fn, str):
            return WRITER_ALIASES.get(fn, fn)
    params = entry.get("params")
    if not isinstance(params, Mapping):
        return None
    if isinstance(params.get("function"), str):
        return WRITER_ALIASES.get(params["function"], params["function"])
    for field, writer in _SIGNATURES:
        if field in params:
            return writer
    if "scales" in params and "n_views" in params:
        return "augmented_features"
    if (
        params.get("units") == "micrometer" and "coord_type" in params
    ):  # the teacher's graph (squidpy: no units)
        return "teacher_niches"
    return DEFAULT_KEYS.get(record_key)


def _legacy_writer(obj: Any, slot: str, key: str) -> str | None:
    """The writer of a key without an ownership record: the function its ``uns[key]['params']`` names (or whose
    default key it is); ``None`` (the user's) for anything else."""
    if not _is_table(obj):
        if slot == "shapes":
            tissue = (
                (obj.attrs.get(OWNERSHIP_KEY) or {}).get("tissue") if isinstance(obj.attrs, Mapping) else None
            )
            if isinstance(tissue, Mapping) and key in tissue:
                return "tissue_mask"
        for table in getattr(obj, "tables", {}).values():
            made = _recorded_function(table.uns.get("aggregate_bins"), "aggregate_bins") == "aggregate_bins"
            region = (table.uns.get("spatialdata_attrs") or {}).get("region")
            regions = [region] if isinstance(region, str) else list(region if region is not None else [])
            if made and (
                (slot == "tables" and obj.tables.get(key) is table) or (slot == "shapes" and key in regions)
            ):
                return "aggregate_bins"
        return None
    if slot == "obsp" and key.endswith(_GRAPH_SUFFIXES):
        base = key[: key.rfind("_")] + "_neighbors"
        return "teacher_niches" if _recorded_function(obj.uns.get(base), "") == "teacher_niches" else None
    candidates = [(key, "")]
    for suffix in ("_proba", "_logits", "_entropy"):
        if key.endswith(suffix) and len(key) > len(suffix):
            candidates.append((key[: -len(suffix)], suffix))
    for record_key, suffix in candidates:
        writer = _recorded_function(obj.uns.get(record_key), record_key)
        if writer is not None and record_key == "spatial_neighbors" == key and slot == "uns":
            return writer
        if writer is not None and (slot, suffix) in _FAMILY.get(writer, set()):
            return writer
    return None


def written_by(obj: Any, slot: str, key: str) -> str | None:
    """The nichekd function that wrote ``slot``/``key`` of a table (or an element of a SpatialData object);
    ``None`` for data nichekd did not write (the user's).

    The ownership record (``uns['nichekd']['writers']``; ``sdata.attrs['nichekd']['writers']`` for elements)
    decides; for stores written before it, a key whose ``uns[key]['params']`` names a function (or is only
    written by one, or is its default key) is that function's. The user's core data (``obs['library']``,
    ``obsm['spatial']``, ``X``, ...) is never a function's.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    >>> adata.obs["teacher_niche"] = ["N0", "N1"]
    >>> written_by(adata, "obs", "teacher_niche") is None  # no record: the user's labels
    True
    """
    if slot == "X":
        key = "X"
    if _is_table(obj) and (slot, key) in CORE:
        return None
    recorded = _records(obj).get(slot, {}).get(key)
    if recorded is not None:
        return recorded
    return _legacy_writer(obj, slot, key)


@dataclass(frozen=True)
class Claim:
    """What a function is about to write (returned by :func:`claim`): record it with :meth:`record` after
    writing; ``replaced`` lists the existing keys the write replaces (``"obs/teacher_niche"``) and
    ``replaced_from`` their writers (``"user"`` for data nichekd did not write)."""

    writer: str
    targets: tuple[tuple[str, str], ...]
    replaced: tuple[str, ...] = ()
    replaced_from: tuple[str, ...] = ()

    def provenance(self) -> dict[str, Any]:
        """``{'replaced': [...], 'replaced_from': [...]}`` for a run's params (empty when nothing was replaced)."""
        if not self.replaced:
            return {}
        return {"replaced": list(self.replaced), "replaced_from": list(self.replaced_from)}

    def record(self, obj: Any) -> None:
        """Mark every target ``obj`` now holds as this writer's (entries of keys that are gone are dropped)."""
        writers = _records(obj)
        for slot, key in self.targets:
            writers.setdefault(slot, {})[key] = self.writer
        writers = {
            slot: {k: w for k, w in keys.items() if _holds(obj, slot, k)} for slot, keys in writers.items()
        }
        entry = _attrs(obj).get(OWNERSHIP_KEY)
        entry = dict(entry) if isinstance(entry, Mapping) else {}
        entry["writers"] = {slot: keys for slot, keys in writers.items() if keys}
        _attrs(obj)[OWNERSHIP_KEY] = entry


def _case_variant(obj: Any, slot: str, key: str) -> str | None:
    """An existing key of ``slot`` that differs from the new ``key`` only in case (spatialdata refuses to write
    both: stores on case-insensitive file systems would mix them up), or ``None``."""
    if slot in ELEMENT_SLOTS:
        existing = [name for kind in ELEMENT_SLOTS for name in getattr(obj, kind, {})]
    elif slot in ("obs", "var"):
        existing = list(getattr(obj, slot).columns)
    elif slot in TABLE_SLOTS and slot != "X":
        existing = list(getattr(obj, slot).keys())
    else:
        return None
    if key in existing:
        return None
    return next((e for e in existing if isinstance(e, str) and e.lower() == key.lower()), None)


def _check_names(obj: Any, targets: list, writer: str, rename: str | None) -> None:
    """Refuse keys spatialdata cannot write to zarr (see :func:`nichekd._core.validate.invalid_name`), before
    anything is written: a wrong type raises :class:`TypeError`, an unusable name :class:`ValueError`."""
    bad, wrong_type = [], False
    for slot, key in targets:
        slot = str(slot)
        if slot in ("X", SCALE_SLOT):  # no key of its own / a library's scale (the library's name)
            continue
        reason = invalid_name(key, column=slot in ("obs", "var"))
        if reason is None and (other := _case_variant(obj, slot, key)) is not None:
            reason = f"{_where(slot, other)} exists and differs from it only in case"
        if reason is not None:
            wrong_type |= not isinstance(key, str)
            bad.append(f"{_where(slot, key)} ({reason})")
    if not bad:
        return
    arg = rename.rstrip("=") if rename else "the key"
    fix = f" Pass {rename} such a name." if rename else ""
    raise (TypeError if wrong_type else ValueError)(
        f"{_func(writer)} cannot write {'; '.join(bad)}: {arg} must be {NAME_RULE}.{fix} Nothing was written."
    )


def claim(
    obj: Any,
    targets: Any,
    *,
    writer: str,
    overwrite: bool = False,
    rename: str | None = "key_added=",
) -> Claim:
    """Check, before anything is written, that ``writer`` may write every ``(slot, key)`` of ``targets``.

    The one write policy of nichekd: a key that already exists may be replaced by the function that wrote it
    (re-running a function on its own key replaces it, as in scanpy); a key written by another function, or
    data nichekd did not write (the user's), only with ``overwrite=True``. A table element its writer made
    counts as another function's once other functions have written into it (replacing it would lose their
    results). The table's region and instance keys (which spatialdata needs), ``uns['spatialdata_attrs']`` and
    ``uns['nichekd']``, and element names held by another kind of element are never replaced. Raises
    ``ValueError`` naming each key, who wrote it and the fixes; nothing is changed.

    Parameters
    ----------
    obj
        The table (slots ``obs``, ``obsm``, ``obsp``, ``layers``, ``uns``, ``var``, ``varm``, ``X``, and
        ``scalefactors``: the scale of a library) or, for elements (``tables``, ``shapes``, ``images``,
        ``labels``, ``points``), the SpatialData object.
    targets
        ``(slot, key)`` pairs the function will write (or delete).
    writer
        The function's name (``"teacher_niches"``).
    overwrite
        Also replace keys written by another function, and the user's data.
    rename
        The argument that picks another key, for the message (``None``: there is none).

    Returns
    -------
    :class:`Claim`: call ``claim.record(target)`` after writing, and put ``claim.provenance()`` in the run's
    params.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    >>> adata.obs["library"] = ["A", "B"]
    >>> c = claim(adata, [("obs", "niche"), ("uns", "niche")], writer="teacher_niches")
    >>> claim(adata, [("obs", "library")], writer="teacher_niches")
    Traceback (most recent call last):
    ...
    ValueError: nk.tl.teacher_niches would replace obs['library'] (the section of each observation), which holds data not written by nichekd (yours). Pass key_added= another name to keep it, or overwrite=True to replace it.
    """
    writer = WRITER_ALIASES.get(writer, writer)
    targets = list(targets)
    pairs = list(dict.fromkeys((str(s), "X" if s == "X" else str(k)) for s, k in targets))
    for slot, _ in pairs:
        if slot not in (*TABLE_SLOTS, SCALE_SLOT, *ELEMENT_SLOTS):
            raise ValueError(f"Unknown slot {slot!r}.")
        if (slot in ELEMENT_SLOTS) == _is_table(obj):
            raise TypeError(f"Slot {slot!r} needs {'a SpatialData object' if _is_table(obj) else 'a table'}.")
    _check_names(obj, targets, writer, rename)
    never = [msg for slot, key in pairs if (msg := _never(obj, slot, key)) is not None]
    if never:
        fix = f" Pass {rename} another name." if rename else ""
        raise ValueError(f"{_func(writer)} cannot write there: " + " ".join(never) + fix)
    conflicts, replaced, replaced_from = [], [], []
    for slot, key in pairs:
        if not _holds(obj, slot, key):
            continue
        owner = written_by(obj, slot, key)
        if slot == "tables" and owner == writer and not overwrite:
            # a table this writer made that other functions have written into since: replacing it loses those
            later = sorted(
                {w for keys in _records(obj.tables[key]).values() for w in keys.values()} - {writer}
            )
            if later:
                conflicts.append((slot, key, later[0]))
                continue
        if owner != writer and not overwrite:
            conflicts.append((slot, key, owner))
            continue
        replaced.append(f"{slot}/{key}")
        replaced_from.append(owner or "user")
    if conflicts:
        parts = []
        for slot, key, owner in conflicts:
            core = CORE.get((slot, key)) if _is_table(obj) else None
            where = _where(slot, key) + (f" ({core})" if core else "")
            parts.append(
                f"{where}, which holds data not written by nichekd (yours)"
                if owner is None
                else f"{where}, which already holds {_WHAT.get(owner, 'results')} of {_func(owner)}"
            )
        it = "them" if len(conflicts) > 1 else "it"
        fix = f"Pass {rename} another name to keep {it}, or " if rename else "Pass "
        raise ValueError(
            f"{_func(writer)} would replace {'; '.join(parts)}. {fix}overwrite=True to replace {it}."
        )
    return Claim(writer, tuple(pairs), tuple(replaced), tuple(replaced_from))


# ---------------------------------------------------------------------------------------------------------------
# which teacher run a student learned from


def _digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()[:16]


def cells_fingerprint(adata: ad.AnnData) -> str:
    """A short checksum of the observation names (which cells, in which order)."""
    return _digest("\x1f".join(map(str, adata.obs_names)).encode())


def labels_fingerprint(adata: ad.AnnData, key: str) -> str:
    """A short checksum of ``obs[key]`` and its ``obsm[f"{key}_proba"]`` / ``obsm[f"{key}_logits"]`` on these
    cells: any change of the labels or of the arrays changes it.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.zeros((3, 1), dtype=np.float32))
    >>> adata.obs["t"] = ["a", "b", "a"]
    >>> before = labels_fingerprint(adata, "t")
    >>> adata.obs["t"] = ["a", "b", "b"]
    >>> labels_fingerprint(adata, "t") == before
    False
    """
    chunks = [cells_fingerprint(adata).encode(), "\x1f".join(adata.obs[key].astype(str)).encode()]
    for suffix in ("_proba", "_logits"):
        arr = adata.obsm.get(f"{key}{suffix}")
        if arr is not None:
            arr = np.ascontiguousarray(np.asarray(arr), dtype=np.float32)
            chunks += [suffix.encode(), str(arr.shape).encode(), arr.tobytes()]
    return _digest(*chunks)


def teacher_run(adata: ad.AnnData, teacher_key: str) -> tuple[str | None, str | None]:
    """``(run id, date)`` of the teacher run that wrote ``teacher_key`` (its record's ``run_id``, else its date
    for records older than run ids); ``(None, None)`` for labels without a record."""
    entry = adata.uns.get(teacher_key)
    params = read_params(entry.get("params")) if isinstance(entry, Mapping) else {}
    date = params.get("date")
    # the fitted model's id where recorded (a fitted teacher labelling new sections is the same teacher), else
    # the run's id, else its date (records older than run ids)
    run = params.get("model_id") or params.get("run_id", date)
    return (None if run is None else str(run)), (None if date is None else str(date))


def teacher_record(adata: ad.AnnData, teacher_key: str) -> dict[str, Any]:
    """What a student records about the teacher it learns from, for :func:`stale_teacher`."""
    run, date = teacher_run(adata, teacher_key)
    return {
        "teacher_run": run,
        "teacher_date": date,
        "teacher_fingerprint": labels_fingerprint(adata, teacher_key),
        "teacher_cells": cells_fingerprint(adata),
    }


def stale_teacher(adata: ad.AnnData, student_key: str, teacher_key: str) -> str | None:
    """Why ``obs[student_key]`` (a student's predictions) did not learn from today's ``obs[teacher_key]``, or
    ``None`` when it did (or nothing says which teacher it learned from).

    The student's record (``uns[student_key]['params']``, from :func:`nichekd.tl.distill`) names the teacher run
    (its ``run_id``) and a checksum of its labels and probabilities on the training object; either changed
    means the teacher was re-run, or its labels were edited, after the student was distilled.
    """
    entry = adata.uns.get(student_key)
    params = read_params(entry.get("params")) if isinstance(entry, Mapping) else {}
    if params.get("teacher_key") != teacher_key or teacher_key not in adata.obs:
        return None
    was, now = params.get("teacher_run"), teacher_run(adata, teacher_key)[0]
    if was is not None and now is not None and str(was) != now:
        detail = (
            f"the teacher was re-run after nk.tl.distill (run of {params.get('teacher_date')} then, of "
            + (f"{teacher_run(adata, teacher_key)[1]} now)")
        )
    elif (
        params.get("teacher_fingerprint") is not None
        and params.get("teacher_cells") == cells_fingerprint(adata)
        and params["teacher_fingerprint"] != labels_fingerprint(adata, teacher_key)
    ):
        detail = "the teacher's labels or probabilities changed after nk.tl.distill"
    else:
        return None
    k_then = len(np.atleast_1d(params.get("niche_names", [])))
    col = adata.obs[teacher_key]
    k_now = len(col.cat.categories) if hasattr(col, "cat") else col.nunique()
    ks = f", with {k_then} niches then and {k_now} now" if k_then and k_then != k_now else ""
    return (
        f"obs[{student_key!r}] was distilled from another run of the teacher obs[{teacher_key!r}]: {detail}{ks}. "
        "Scores against today's teacher compare the student with niches it never learned. Re-run "
        f"nk.tl.distill(sdata, teacher_key={teacher_key!r}, key_added={student_key!r}, ...) on this teacher."
    )
