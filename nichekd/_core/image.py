"""One rule for image pixel values: any dtype or layout to RGB ``uint8`` ``(c, y, x)``."""

from __future__ import annotations

from typing import Any

import numpy as np

# Pixels sampled per axis when deciding how to rescale an image (keeps dask images lazy).
_RANGE_SAMPLE_SIDE = 512


def _strided_sample(arr: Any, spatial_axes: tuple[int, int]) -> np.ndarray:
    step = [1] * arr.ndim
    for ax in spatial_axes:
        step[ax] = max(1, arr.shape[ax] // _RANGE_SAMPLE_SIDE)
    return np.asarray(arr[tuple(slice(None, None, s) for s in step)])


def to_uint8(image: Any, *, spatial_axes: tuple[int, int] = (0, 1), source: str = "image") -> tuple[Any, str]:
    """An 8-bit copy of ``image`` (numpy or dask, kept lazy) and the rule used, as text to record.

    Rules, by dtype: ``uint8`` is kept; other integer types are scaled by their full range
    (``x * 255 / dtype_max``, e.g. 16-bit ``x / 257``; negative values of signed types are refused); floats are
    taken as ``[0, 1]`` (``x * 255``) when a strided sample of the image stays within ``[0, 1]``, as
    ``[0, 255]`` when it stays within that, and refused otherwise (their range is unknown). Results are
    rounded and clipped to ``[0, 255]``.

    Examples
    --------
    >>> arr, rule = to_uint8(np.full((2, 2, 3), 65535, dtype=np.uint16))
    >>> int(arr.max()), rule
    (255, 'uint16 scaled by its range: x * 255 / 65535')
    """
    dtype = np.dtype(image.dtype)
    if dtype == np.uint8:
        return image, "uint8 kept"
    if dtype == np.bool_:
        raise ValueError(f"The {source} is a binary mask ({dtype}), not an H&E image.")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if info.min < 0 and float(_strided_sample(image, spatial_axes).min()) < 0:
            raise ValueError(
                f"The {source} ({dtype}) has negative values; it is not a brightfield H&E image."
            )
        scale, rule = 255.0 / info.max, f"{dtype} scaled by its range: x * 255 / {info.max}"
    elif np.issubdtype(dtype, np.floating):
        sample = _strided_sample(image, spatial_axes).astype(np.float64)
        finite = sample[np.isfinite(sample)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"The {source} is {dtype} with values in [{lo:.4g}, {hi:.4g}]: neither [0, 1] nor [0, 255], so "
                "its intensity range is unknown. Rescale it to uint8 (0-255) yourself."
            )
        scale, rule = (
            (255.0, f"{dtype} in [0, 1]: x * 255") if hi <= 1.0 else (1.0, f"{dtype} in [0, 255]: kept")
        )
    else:
        raise ValueError(f"The {source} has dtype {dtype}; an H&E image must hold numbers (uint8 RGB).")
    lib = _array_lib(image)
    out = lib.clip(lib.round(image.astype(np.float32) * np.float32(scale)), 0, 255).astype(np.uint8)
    return out, rule


def _array_lib(arr: Any):
    if type(arr).__module__.startswith("dask"):
        import dask.array as da

        return da
    return np


def as_rgb_cyx(image: Any) -> Any:
    """Return a ``(c, y, x)`` uint8 RGB array (numpy or dask) from ``(y, x, c)``/``(c, y, x)`` input.

    Non-8-bit images are rescaled by :func:`to_uint8` (16-bit by its range, floats in ``[0, 1]`` or
    ``[0, 255]``) with a warning naming the rule. Grayscale images (``(y, x)`` or one channel) are converted
    to RGB by repeating the channel, with a warning: H&E colour (the stain) is lost, so colour-based encoders
    (``"stain"``, stain normalisation) see no haematoxylin/eosin contrast and features differ from a colour
    scan of the same tissue.
    """
    import warnings

    arr = image
    lib = _array_lib(arr)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]) and 3 not in (arr.shape[0], arr.shape[-1]):
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim == 2:
        warnings.warn(
            f"The H&E image is grayscale {tuple(image.shape)}: converted to RGB by repeating the channel. Stain "
            "colour is lost, so colour-based features differ from those of a colour scan.",
            UserWarning,
            stacklevel=2,
        )
        arr = lib.stack([arr, arr, arr], axis=0)
    if arr.ndim != 3:
        raise ValueError(f"The H&E image must have 3 dimensions (RGB), got shape {arr.shape}.")
    if arr.shape[0] not in (3, 4) and arr.shape[-1] in (3, 4):
        arr = arr.transpose(2, 0, 1)
    if arr.shape[0] == 4:  # drop alpha
        arr = arr[:3]
    if arr.shape[0] != 3:
        raise ValueError(
            f"The H&E image must be RGB (3 channels), got shape {image.shape}; "
            "fluorescence or multi-channel images are not H&E."
        )
    if arr.dtype != np.uint8:
        arr, rule = to_uint8(arr, spatial_axes=(1, 2), source="H&E image")
        warnings.warn(f"The H&E image is not 8-bit: rescaled to uint8 ({rule}).", UserWarning, stacklevel=2)
    return arr
