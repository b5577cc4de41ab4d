"""Small helpers shared across nichekd: devices, provenance, writing results."""

from __future__ import annotations

import platform
from collections.abc import Mapping
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


def _uns_safe(value: Any) -> Any:
    """anndata cannot write None; drop those and make containers plain."""
    if isinstance(value, Mapping):
        return {str(k): _uns_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple | list):
        return [_uns_safe(v) for v in value if v is not None]
    if isinstance(value, np.generic):
        return value.item()
    return value


def store_params(adata: ad.AnnData, key_added: str, params: Mapping[str, Any], **extra: Any) -> None:
    """Write ``uns[key_added] = {'params': ..., **extra}`` with versions and a timestamp."""
    record = dict(params)
    record["versions"] = versions()
    record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    adata.uns[key_added] = _uns_safe({"params": record, **extra})
