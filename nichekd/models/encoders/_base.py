"""The encoder interface: uint8 RGB patches in, one feature vector per patch out."""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..._core.runtime import torch_threads, worker_pool

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone needs and produces; one row of :func:`list_backbones`."""

    name: str
    kind: str  # "cnn", "handcrafted", "foundation", "custom", "precomputed"
    input_size: int
    mpp: float  # microns per pixel of the encoder's working resolution
    output_dim: int | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: str = ""
    needs: str = ""  # extra packages / network / access, "" when it works offline out of the box
    embedding: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def available_threads() -> int:
    """CPU cores this process may use (respects affinity masks, e.g. in containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


#: Accepted ``precision=`` values; ``"auto"`` is bf16 on CPUs with native bf16 and bf16/fp16 on CUDA.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEFAULT_LLC_BYTES = 8 << 20  # assumed last-level cache where the OS does not say


def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none, e.g. macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions and matmuls natively (AVX512-BF16 or AMX-BF16 and a oneDNN
    build that uses them). Without these instructions torch emulates bf16, slower than fp32, so it is never
    used there."""
    import torch

    if not {"avx512_bf16", "amx_bf16"} & _cpu_flags():
        return False
    mkldnn = torch.backends.mkldnn
    return bool(mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: str) -> str:
    """The precision ``precision`` means on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"``: bf16 autocast on CPUs with native bf16 (:func:`cpu_bf16_supported`), else fp32; bf16 autocast
    on CUDA devices that support it, else fp16; fp32 elsewhere (MPS).
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    kind = str(device).split(":")[0]
    if kind == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return "bf16" if bf16 else "fp16"
        if precision == "bf16" and not bf16:
            raise ValueError(f"{device} does not support bf16; pass precision='fp16' or 'fp32'.")
        return precision
    if precision == "auto":
        return "bf16" if kind == "cpu" and cpu_bf16_supported() else "fp32"
    if precision == "fp16" and kind != "mps":
        raise ValueError(
            f"precision='fp16' runs on CUDA or MPS devices only, not {device!r}; use 'bf16' or 'fp32'."
        )
    if precision == "bf16" and kind == "cpu" and not cpu_bf16_supported():
        raise ValueError(
            "This CPU has no native bf16 (avx512_bf16 / amx_bf16): torch would emulate it, slower than fp32. "
            "Use precision='fp32' (or 'auto')."
        )
    return precision


def last_level_cache_bytes() -> int:
    """Size of the CPU's last-level cache (shared L3 where there is one), from sysfs; 8 MiB if unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(f"{base}/{entry}/size") as fh:
                text = fh.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * scale)
    except (OSError, ValueError):
        pass
    return best or _DEFAULT_LLC_BYTES


class Encoder:
    """Base class: ``encoder(patches)`` maps ``(n, 3, s, s)`` uint8 RGB to ``(n, d)`` float32 features.

    ``n_threads`` (``None``: torch's current setting) is the CPU thread count the encoder may use;
    ``precision`` is the arithmetic it actually runs in (``"fp32"``, ``"bf16"`` or ``"fp16"``);
    ``min_batch`` is the fewest patches per call that keep all its threads busy (callers batch at least that).
    """

    spec: BackboneSpec
    device: str = "cpu"
    n_threads: int | None = None
    precision: str = "fp32"
    min_batch: int = 1

    @property
    def output_dim(self) -> int | None:
        """Feature dimension (None until known)."""
        return self.spec.output_dim

    def configure(self, *, precision: str = "auto", n_threads: int | None = None) -> Encoder:
        """Set the thread count; ``precision`` is ignored by encoders without a neural network."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads must be at least 1, got {n_threads}.")
        self.n_threads = n_threads
        return self

    def __call__(self, patches: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class TorchEncoder(Encoder):
    """Wraps a ``torch.nn.Module`` (or callable on tensors): normalise, batch forward, pool to vectors.

    ``pool`` turns the module output into one vector per patch: ``"auto"`` averages ``(n, c, h, w)`` maps over
    space, takes token 0 (CLS) of ``(n, tokens, d)`` and keeps ``(n, d)``; a callable is applied as is.

    On CPU the forward pass runs in channels-last memory format, under bf16 autocast where the CPU has native
    bf16 (``precision="auto"``), in micro-batches small enough that one layer's input and output stay in the
    last-level cache (``micro_batch``; per core 1.3-1.5x faster than batches of 32 on EfficientNet-Lite0),
    one micro-batch per worker thread; on CUDA under bf16/fp16 autocast, whole batches, from pinned memory.
    ``model`` is the ``nn.Module`` behind a callable ``module`` (its layers size the micro-batch).
    """

    def __init__(
        self,
        module: Any,
        spec: BackboneSpec,
        device: str = "cpu",
        pool: Any = "auto",
        *,
        model: Any = None,
        precision: str = "auto",
        n_threads: int | None = None,
        micro_batch: int | None = None,
    ) -> None:
        import torch

        self.spec = spec
        self.device = device
        self.module = module
        self.pool = pool
        self.model = model if model is not None else module
        if isinstance(self.model, torch.nn.Module):
            self.model.eval()
            self.model.to(device)
            if device == "cpu":
                # convolutions run faster in channels-last on CPU; harmless for transformers
                self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self.micro_batch = micro_batch
        self._auto_micro_batch = micro_batch is None
        self.configure(precision=precision, n_threads=n_threads)

    def configure(self, *, precision: str = "auto", n_threads: int | None = None) -> TorchEncoder:
        """Choose the precision (see :func:`resolve_precision`) and the CPU thread count."""
        super().configure(precision=precision, n_threads=n_threads)
        self.precision = resolve_precision(precision, self.device)
        if self._auto_micro_batch:
            self.micro_batch = None  # re-sized at the next call: bf16 layers take half the cache
        return self

    def _autocast(self) -> Any:
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(str(self.device).split(":")[0], dtype=dtype)

    def _pool(self, out: Any) -> Any:
        if callable(self.pool):
            return self.pool(out)
        if isinstance(out, tuple | list):
            out = out[0]
        if out.ndim == 4:
            return out.mean(dim=(2, 3))
        if out.ndim == 3:
            return out[:, 0]
        return out.reshape(out.shape[0], -1)

    def _forward(self, x: Any) -> Any:
        """Pooled features of a uint8 tensor batch on the device."""
        import torch

        x = (x.float() - self._mean) / self._std
        if self.device == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.as_tensor(self._pool(self.module(x))).float()

    def _micro_batch(self, size: int) -> int:
        """Patches per forward pass: the whole batch off CPU; on CPU about as many as fit the largest layer's
        input and output in the last-level cache (at least 1, at most 64)."""
        import torch

        if self.micro_batch is not None:
            return self.micro_batch
        if self.device != "cpu" or not isinstance(self.model, torch.nn.Module):
            self.micro_batch = 64 if self.device == "cpu" else 1 << 30
            return self.micro_batch
        peak = [0]

        def hook(_mod: Any, inputs: Any, output: Any) -> None:
            tensors = {t.data_ptr(): t for t in (*inputs, output) if isinstance(t, torch.Tensor)}
            peak[0] = max(peak[0], sum(t.numel() * t.element_size() for t in tensors.values()))

        handles = [m.register_forward_hook(hook) for m in self.model.modules()]
        try:
            probe = torch.full((1, 3, size, size), 128, dtype=torch.uint8)
            self._forward(probe)
        finally:
            for h in handles:
                h.remove()
        # rounded up to a power of two: the best measured on EfficientNet-Lite0 with a 32 MiB L3 (4 in fp32,
        # 8 in bf16; a batch of 64 ran ~2x slower)
        fit = last_level_cache_bytes() / max(peak[0], 1)
        self.micro_batch = int(min(64, 1 << max(0, math.ceil(math.log2(max(fit, 1.0))))))
        return self.micro_batch

    def _forward_chunk(self, x: Any, single_thread: bool = False) -> Any:
        """:meth:`_forward` under inference mode and the precision's autocast (both are thread-local)."""
        import torch

        if single_thread:
            torch.set_num_threads(1)  # this worker thread's own OpenMP setting
        with torch.inference_mode(), self._autocast():
            return self._forward(x)

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Features of ``(n, 3, s, s)`` uint8 patches (``s`` must equal the spec's input size).

        On CPU the micro-batches run side by side on ``n_threads`` worker threads (default: torch's current
        thread count), each with one intra-op thread: no OpenMP barrier per layer, which on a shared machine
        stalls whenever one of the threads is descheduled (measured 2.5-5x faster than two OpenMP threads under
        load). Each micro-batch's result does not depend on the others or on the thread count.
        """
        import torch

        x = torch.from_numpy(np.ascontiguousarray(patches))
        if str(self.device).startswith("cuda"):
            x = x.pin_memory()  # lets the copy overlap the previous batch's compute
        x = x.to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            step = self._micro_batch(x.shape[-1]) if len(x) else 1
        chunks = [x[i : i + step] for i in range(0, len(x), step)]
        workers = min(len(chunks), int(self.n_threads or torch.get_num_threads()))
        if self.device == "cpu" and workers > 1:
            with torch_threads(1):
                out = list(
                    worker_pool(workers).map(lambda c: self._forward_chunk(c, single_thread=True), chunks)
                )
        else:
            with torch_threads(self.n_threads):
                out = [self._forward_chunk(c) for c in chunks]
        feats = torch.cat(out) if out else torch.zeros((0, self.output_dim or 0))
        return feats.cpu().numpy().astype(np.float32, copy=False)
