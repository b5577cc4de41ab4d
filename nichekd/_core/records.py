"""Provenance records in ``uns``: what each function stores about a run and how it is read back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import anndata as ad
import numpy as np

from .runtime import versions

# anndata cannot write None: a record lists the keys whose value was None under this key instead
UNSET_KEY = "unset"


def _uns_safe(value: Any) -> Any:
    """Plain containers anndata can write; None values of a mapping are listed under ``UNSET_KEY``."""
    if isinstance(value, Mapping):
        out = {str(k): _uns_safe(v) for k, v in value.items() if v is not None and k != UNSET_KEY}
        listed = value.get(UNSET_KEY)
        listed = [] if listed is None else [str(k) for k in np.atleast_1d(listed)]
        unset = sorted({str(k) for k, v in value.items() if v is None} | set(listed))
        if unset:
            out[UNSET_KEY] = unset
        return out
    if isinstance(value, tuple | list):
        return [_uns_safe(v) for v in value if v is not None]
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


def store_params(adata: ad.AnnData, key_added: str, params: Mapping[str, Any], **extra: Any) -> None:
    """Write ``uns[key_added] = {'params': ..., **extra}`` with versions and a timestamp.

    Settings equal to None are kept: their names are listed in ``params['unset']`` (anndata cannot write
    None), so that a later comparison sees them; :func:`read_params` restores them.
    """
    record = dict(params)
    record["versions"] = versions()
    record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    adata.uns[key_added] = _uns_safe({"params": record, **extra})


def store_run(adata: ad.AnnData, key_added: str, params: Mapping[str, Any]) -> str:
    """Add one run's record to ``uns[key_added]['runs']`` (keeping every earlier run and the key's
    ``params``); the first writer of the key also sets ``params``. Returns the run's name (``run0``, ...)."""
    record = dict(params)
    record["versions"] = versions()
    record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    entry = adata.uns.get(key_added)
    entry = dict(entry) if isinstance(entry, Mapping) else {}
    runs = dict(entry.get("runs", {}))
    name = f"run{len(runs)}"
    runs[name] = {"params": record}
    entry["runs"] = runs
    entry.setdefault("params", record)
    adata.uns[key_added] = _uns_safe(entry)
    return name
