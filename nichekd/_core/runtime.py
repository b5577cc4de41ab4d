"""Where and how work runs: device, threads, seeds, versions."""

from __future__ import annotations

import os
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

# the devices nichekd runs on: "auto" picks one, "cuda:<index>" names one GPU
DEVICES = ("auto", "cpu", "cuda", "mps")


def check_device(device: Any, name: str = "device") -> str:
    """The one device rule of every function taking ``device=``: ``"auto"``, ``"cpu"``, ``"cuda"``,
    ``"cuda:<index>"`` or ``"mps"`` (an index is allowed on each but ``"auto"``; a ``torch.device`` of those is
    taken as its string). Raises :class:`TypeError` / :class:`ValueError` naming ``device=`` and the allowed
    values; torch is not imported (whether the device exists is :func:`resolve_device`'s check).

    Examples
    --------
    >>> check_device("cuda:0")
    'cuda:0'
    """
    if type(device).__name__ == "device" and type(device).__module__.startswith("torch"):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(
            f"{name} must be one of {list(DEVICES)} or 'cuda:<index>', got {device!r} ({type(device).__name__})."
        )
    kind, _, index = device.partition(":")
    if kind not in DEVICES or (index and (kind == "auto" or not index.isdigit())) or device.endswith(":"):
        raise ValueError(f"{name} must be one of {list(DEVICES)} or 'cuda:<index>', got {device!r}.")
    return device


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else (checked by :func:`check_device`) is
    passed to torch as given, once it exists on this machine."""
    device = check_device(device)
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} was requested but CUDA is not available; use device='cpu'."
            )
        if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
            raise RuntimeError(
                f"device={device!r} was requested but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1}); use one of those or device='cpu'."
            )
        if device.startswith("mps") and not (
            getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        ):
            raise RuntimeError(
                f"device={device!r} was requested but Apple MPS is not available; use device='cpu'."
            )
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@contextmanager
def torch_threads(n_threads: int | None, *, at_most: bool = False) -> Iterator[None]:
    """Run the block with ``n_threads`` torch threads, then restore the caller's setting.

    ``None`` leaves torch's setting alone. ``at_most=True`` only ever lowers it (a small model gains nothing
    from more threads and would oversubscribe a shared machine); otherwise the count is set as asked (an
    encoder the user gave ``n_threads``). Either way the process-wide count is put back afterwards.

    Examples
    --------
    >>> with torch_threads(1):  # doctest: +SKIP
    ...     model(x)
    """
    if n_threads is None:
        yield
        return
    if int(n_threads) < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}.")
    import torch

    before = torch.get_num_threads()
    target = min(int(n_threads), before) if at_most else int(n_threads)
    if target == before:
        yield
        return
    torch.set_num_threads(target)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_POOLS: dict[int, Any] = {}
_POOLS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of the parent's threads


def worker_pool(n_threads: int) -> Any:
    """A process-wide :class:`~concurrent.futures.ThreadPoolExecutor` of ``n_threads`` threads, started once.

    Encoders run every batch's chunks on it: starting fresh threads per batch cost more than a stain batch's
    work. Its tasks must not submit to it and wait (a full pool would wait on itself).

    Examples
    --------
    >>> list(worker_pool(2).map(abs, [-1, 2]))
    [1, 2]
    """
    from concurrent.futures import ThreadPoolExecutor

    n = max(1, int(n_threads))
    with _POOLS_LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix=f"nichekd-worker{n}")
        return _POOLS[n]


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
