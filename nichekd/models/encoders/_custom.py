"""User encoders: any ``torch.nn.Module`` or callable on normalised image tensors."""

from __future__ import annotations

from typing import Any

from ._base import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, TorchEncoder


def custom_name(backbone: Any) -> str:
    """A readable, stable name for a user encoder: ``custom:<module>.<class>``."""
    target = (
        backbone
        if isinstance(backbone, type) or callable(backbone) and hasattr(backbone, "__name__")
        else type(backbone)
    )
    return f"custom:{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(backbone).__name__)}"


def custom_spec(
    backbone: Any, *, input_size: int | None, mpp: float | None, mean: Any, std: Any
) -> BackboneSpec:
    """Spec of a user encoder; ``input_size`` and ``mpp`` default to 224 px at 0.5 um/px, ImageNet mean/std."""
    return BackboneSpec(
        name=custom_name(backbone),
        kind="custom",
        input_size=int(input_size or 224),
        mpp=float(mpp or 0.5),
        output_dim=None,
        mean=tuple(float(v) for v in (mean if mean is not None else IMAGENET_MEAN)),
        std=tuple(float(v) for v in (std if std is not None else IMAGENET_STD)),
        weights="user-supplied",
        needs="the module (pass it again as backbone= to recompute)",
        embedding="module output: spatial mean of (n, c, h, w), token 0 of (n, t, d), or (n, d) as is",
    )


def build(backbone: Any, spec: BackboneSpec, device: str = "cpu") -> TorchEncoder:
    """Wrap ``backbone`` (an ``nn.Module`` or a callable on ``(n, 3, s, s)`` float tensors)."""
    if not callable(backbone):
        raise TypeError(
            f"backbone must be a name, a torch.nn.Module or a callable, got {type(backbone).__name__}."
        )
    return TorchEncoder(backbone, spec, device=device, pool="auto")
