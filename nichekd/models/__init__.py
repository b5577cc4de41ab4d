"""Model objects (sklearn-like fit/predict/save/load) behind the scanpy-style functions.

``import nichekd`` does not import torch: the model classes import it where a model is built, fitted or
loaded, and the torch-only names below (:class:`RelativePositionEncoding`, :func:`fourier_position_features`)
are loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# one import line per module below
from .student import NicheStudent
from .teacher import NicheTeacher

if TYPE_CHECKING:
    from ._position import RelativePositionEncoding, fourier_position_features

_TORCH_NAMES = {"RelativePositionEncoding": "_position", "fourier_position_features": "_position"}


def __getattr__(name: str) -> Any:
    """PEP 562: the torch-backed names, imported (with torch) when first used."""
    if name in _TORCH_NAMES:
        from importlib import import_module

        return getattr(import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_TORCH_NAMES])
