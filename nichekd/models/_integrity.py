"""Checksums that saved models carry, verified on load: the weights and the fields that define a model."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """Plain JSON types (numpy scalars and arrays become numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def definition_digest(fields: dict[str, Any], *, exclude: tuple[str, ...] = ("checksum",)) -> str:
    """sha256 of a model's defining fields as canonical JSON (everything but ``exclude``)."""
    kept = {k: v for k, v in fields.items() if k not in exclude}
    return hashlib.sha256(json.dumps(json_safe(kept), sort_keys=True).encode()).hexdigest()


def arrays_digest(arrays: dict[str, Any]) -> str:
    """sha256 over every array's (or tensor's) name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        if hasattr(a, "detach"):  # a torch tensor (numpy has no bfloat16: hash those as float32)
            a = a.detach().cpu()
            a = (a.float() if str(a.dtype) == "torch.bfloat16" else a).numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
