"""Small helpers shared across nichekd: devices, provenance, writing results."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import anndata as ad
import numpy as np


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else is passed to torch as given."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} was requested but CUDA is not available; use device='cpu'."
            )
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Put torch's intra-op thread count back after code that resets it.

    threadpoolctl (restoring MKL/OpenMP on exit) and numba's OpenMP layer (squidpy's graphs) set the shared
    OpenMP thread count, which is torch's: a student trained afterwards would use another number of threads
    than the user set, so other floating-point sums and other weights for the same seed.
    """
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if before is not None and torch is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def one_blas_thread(user_api: str | None = "blas") -> Iterator[None]:
    """One BLAS (or, with ``user_api=None``, any native) thread for the duration, for small matrices."""
    from threadpoolctl import threadpool_limits

    with keep_torch_threads(), threadpool_limits(1, user_api=user_api):
        yield


def seed_everything(random_state: int) -> np.random.Generator:
    """Seed numpy and torch; return a numpy Generator for local draws."""
    import torch

    torch.manual_seed(int(random_state))
    return np.random.default_rng(int(random_state))


def versions() -> dict[str, str]:
    """Versions of the packages that determine results, for ``uns[...]['params']``."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("nichekd", "numpy", "scikit-learn", "scanpy", "torch", "spatialdata"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


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
