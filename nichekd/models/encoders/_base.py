"""The encoder interface: uint8 RGB patches in, one feature vector per patch out."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


class Encoder:
    """Base class: ``encoder(patches)`` maps ``(n, 3, s, s)`` uint8 RGB to ``(n, d)`` float32 features."""

    spec: BackboneSpec
    device: str = "cpu"

    @property
    def output_dim(self) -> int | None:
        """Feature dimension (None until known)."""
        return self.spec.output_dim

    def __call__(self, patches: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class TorchEncoder(Encoder):
    """Wraps a ``torch.nn.Module`` (or callable on tensors): normalise, batch forward, pool to vectors.

    ``pool`` turns the module output into one vector per patch: ``"auto"`` averages ``(n, c, h, w)`` maps over
    space, takes token 0 (CLS) of ``(n, tokens, d)`` and keeps ``(n, d)``; a callable is applied as is.
    """

    def __init__(self, module: Any, spec: BackboneSpec, device: str = "cpu", pool: Any = "auto") -> None:
        import torch

        self.spec = spec
        self.device = device
        self.module = module
        self.pool = pool
        if isinstance(module, torch.nn.Module):
            module.eval()
            module.to(device)
            if device == "cpu":
                # convolutions run faster in channels-last on CPU; harmless for transformers
                module.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0

    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

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

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Features of ``(n, 3, s, s)`` uint8 patches (``s`` must equal the spec's input size)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device, non_blocking=True)
        x = (x.float() - self._mean) / self._std
        if self.device == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            out = self._pool(self.module(x))
        out = torch.as_tensor(out)
        return out.float().cpu().numpy().astype(np.float32, copy=False)
