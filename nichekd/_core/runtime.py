"""Where and how work runs: device, threads, seeds, versions."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
