"""One rule for image pixel values: any dtype or layout to RGB ``uint8`` ``(c, y, x)``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

# Pixels sampled per axis when deciding how to rescale an image (keeps dask images lazy).
_RANGE_SAMPLE_SIDE = 512


def _strided_sample(arr: Any, spatial_axes: tuple[int, int]) -> np.ndarray:
    step = [1] * arr.ndim
    for ax in spatial_axes:
        step[ax] = max(1, arr.shape[ax] // _RANGE_SAMPLE_SIDE)
    return np.asarray(arr[tuple(slice(None, None, s) for s in step)])


def integer_range(dtype: Any, hi: float) -> int:
    """The range an integer image whose largest value is ``hi`` was recorded in: the smallest ``2**b - 1`` for
    ``b`` in 8, 10, 12, 14, 16 (then 24, 32, 48 for wider types, and the type's own maximum) that holds ``hi``.

    Scanners and cameras store 10-, 12- or 14-bit data in 16-bit files, and other tools store 8-bit values in
    ``int32``/``int64``: scaled by the dtype's full range such images read nearly black.

    Examples
    --------
    >>> integer_range(np.uint16, 4080), integer_range(np.uint16, 40000), integer_range(np.int64, 200)
    (4095, 65535, 255)
    """
    top = int(np.iinfo(np.dtype(dtype)).max)
    ranges = [2**b - 1 for b in (8, 10, 12, 14, 16, 24, 32, 48) if 2**b - 1 < top] + [top]
    return next((r for r in ranges if hi <= r), top)


def dtype_rule(dtype: Any, sample: Any, source: str = "image") -> tuple[float | None, str]:
    """``(scale, rule)`` that takes pixel values of ``dtype`` to 8 bits: ``round(x * scale)`` clipped to
    ``[0, 255]`` (``scale`` is ``None`` for ``uint8``, kept as it is), and the rule as text to record.

    ``sample`` (an array, or a function returning one, called only where the rule needs values) is a strided
    sample of the *whole* image: the rule depends on it for integers other than ``uint8`` (the range the data
    were recorded in, :func:`integer_range`: 8-bit values in any integer type are kept, 12-bit data in a
    ``uint16`` file are ``x * 255 / 4095``, full-range 16-bit data ``x * 255 / 65535``; negative values
    refused) and for floats (``[0, 1]`` or ``[0, 255]``), and it is taken once per image, so every tile of an
    image is scaled alike. Non-finite sample values are ignored (see :class:`PixelRule` for what becomes of
    them). Values above the range (pixels the strided sample missed) are clipped to 255.
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return None, "uint8 kept"
    if dtype == np.bool_:
        raise ValueError(
            f"The {source} is a binary mask ({dtype}), not an H&E image: a mask holds no stain colour, so it "
            "cannot be converted into one. Pass image_key= with the H&E (RGB) scan of this section (a mask of "
            "the tissue belongs in sdata.labels, e.g. spatialdata.models.Labels2DModel, not among the images)."
        )

    def values() -> np.ndarray:
        return np.asarray(sample() if callable(sample) else sample)

    if np.issubdtype(dtype, np.integer):
        got = values()
        if got.size and np.iinfo(dtype).min < 0 and int(got.min()) < 0:
            raise ValueError(
                f"The {source} ({dtype}) has negative values; it is not a brightfield H&E image."
            )
        hi = int(got.max()) if got.size else 0
        top = integer_range(dtype, hi)
        how = "x * 255 / 255, kept" if top == 255 else f"x * 255 / {top}"
        return (
            255.0 / top,
            f"{dtype} scaled by its range as {top.bit_length()}-bit data (values up to {hi}): {how}",
        )
    if np.issubdtype(dtype, np.floating):
        got = values().astype(np.float64)
        finite = got[np.isfinite(got)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"The {source} is {dtype} with values in [{lo:.4g}, {hi:.4g}]: neither [0, 1] nor [0, 255], so "
                "its intensity range is unknown. Rescale it to uint8 (0-255) yourself."
            )
        return (255.0, f"{dtype} in [0, 1]: x * 255") if hi <= 1.0 else (1.0, f"{dtype} in [0, 255]: kept")
    raise ValueError(f"The {source} has dtype {dtype}; an H&E image must hold numbers (uint8 RGB).")


def to_uint8(
    image: Any, *, spatial_axes: tuple[int, int] = (0, 1), source: str = "image", sample_from: Any = None
) -> tuple[Any, str]:
    """An 8-bit copy of ``image`` (numpy or dask, kept lazy) and the rule used, as text to record.

    Rules, by dtype (:func:`dtype_rule`), decided once from a strided sample of the whole image: ``uint8`` is
    kept; other integer types are scaled by the range their data were recorded in (:func:`integer_range`: 8-bit
    values of any integer type are kept, 12-bit data in a 16-bit file are ``x * 255 / 4095``, full-range 16-bit
    data ``x * 255 / 65535``; negative values of signed types are refused); floats are taken as ``[0, 1]``
    (``x * 255``) when the sample stays within ``[0, 1]``, as ``[0, 255]`` when it stays within that, and
    refused otherwise (their range is unknown). Results are rounded and clipped to ``[0, 255]``.

    ``sample_from``: another array of the same image to take the sample from (a coarser pyramid level, with the
    same layout), so that every level of a pyramid gets one rule and a huge level is not read for it.

    Examples
    --------
    >>> arr, rule = to_uint8(np.full((2, 2, 3), 65535, dtype=np.uint16))
    >>> int(arr.max()), rule
    (255, 'uint16 scaled by its range as 16-bit data (values up to 65535): x * 255 / 65535')
    >>> to_uint8(np.full((2, 2, 3), 4080, dtype=np.uint16))[1]
    'uint16 scaled by its range as 12-bit data (values up to 4080): x * 255 / 4095'
    """
    ref = image if sample_from is None else sample_from
    scale, rule = dtype_rule(image.dtype, lambda: _strided_sample(ref, spatial_axes), source)
    if scale is None:
        return image, rule
    lib = _array_lib(image)
    out = lib.clip(lib.round(image.astype(np.float32) * np.float32(scale)), 0, 255).astype(np.uint8)
    return out, rule


# Channel names (the ``c`` coordinate of an image element, case-insensitive) that say which channel is which.
_RGB_NAMES = {"r": 0, "red": 0, "g": 1, "green": 1, "b": 2, "blue": 2}
_ALPHA_NAMES = ("a", "alpha")
# Words of a channel name that mark a fluorescence channel (a nuclear stain, a dye, a marker): a single
# channel so named is refused, not read as grayscale. Matched whole against each word of the name.
_FLUORESCENCE_WORDS = re.compile(
    r"dapi|hoechst\d*|draq\d*|syto\w*|propidium|pi|nuclear|nuclei|nucleus|dna\d*|fitc|tritc|texas|cy\d|"
    r"alexa\w*|af\d{3}|atto\d*|opal\d*|[cegrby]fp|egfp|mcherry|tdtomato|mscarlet|fluo\w*|if|\d{3}nm|"
    r"cd\d+[a-z]?|panck|ck\d*|cytokeratin|keratin|vimentin|cadherin|ecadherin|atp1a1|18s|(alpha)?sma|membrane|"
    r"boundary|interior|morphology"
)


def fluorescence_name(name: Any) -> bool:
    """Whether a channel name is a fluorescence stain, dye or marker (``DAPI``, ``Hoechst 33342``, ``CD45``,
    ``AF488``, ...), by its words.

    Examples
    --------
    >>> fluorescence_name("DAPI"), fluorescence_name("ATP1A1/CD45/E-Cadherin"), fluorescence_name("gray")
    (True, True, False)
    """
    words = re.split(r"[^0-9a-z]+", str(name).strip().lower())
    return any(_FLUORESCENCE_WORDS.fullmatch(w) for w in words if w)


def rgb_channels(names: Any, dtype: Any, source: str = "image", *, grey: bool = True) -> tuple[int, ...]:
    """Positions, along ``c``, of the red, green and blue channels of an image whose channels are ``names``
    (one position for a grayscale image, where ``grey`` allows it); an error saying why it is not H&E otherwise.

    Names are read case-insensitively: ``r, g, b`` (or ``red, green, blue``) in any order, with an optional
    alpha channel ``a`` that is dropped; unnamed channels (spatialdata's default ``0, 1, 2``) are RGB in that
    order, and a fourth unnamed channel is taken as alpha for ``uint8`` images (RGBA PNGs). One channel is a
    grayscale image whatever its name (``gray``, ``L``, ``brightfield``, ``0``, ...), unless the name is a
    fluorescence stain or marker (:func:`fluorescence_name`: ``DAPI``, ``Hoechst``, ``CD45``, ...). Of several
    channels, any other name (a stain or marker) marks a fluorescence or multiplex image, which is no H&E.

    Examples
    --------
    >>> rgb_channels(["b", "g", "r"], np.uint8)
    (2, 1, 0)
    >>> rgb_channels([0, 1, 2, 3], np.uint8)
    (0, 1, 2)
    >>> rgb_channels(["luminance"], np.uint8)
    (0,)
    """
    shown = [str(n) for n in names]
    low = [n.strip().lower() for n in shown]
    n = len(low)
    single = n == 1 and low[0] not in _ALPHA_NAMES and not fluorescence_name(low[0])
    if single and grey:
        return (0,)
    if single:
        named = "" if low[0] == "0" else f" ({shown[0]!r})"
        raise ValueError(
            f"The {source} has 1 channel{named}: it is grayscale, not H&E (RGB), so it is not chosen "
            "automatically; passed as image_key= it is read as grayscale (its channel repeated to RGB, stain "
            "colour lost)."
        )
    if n and len(set(low)) == n and set(low) == {str(i) for i in range(n)}:  # unnamed: spatialdata's default
        order = tuple(low.index(str(i)) for i in range(n))
        if n == 3 or (n == 4 and np.dtype(dtype) == np.uint8):
            return order[:3]
        if n == 4:
            raise ValueError(
                f"The {source} has 4 unnamed channels of {np.dtype(dtype)}: an RGBA scan is 8-bit, so this looks "
                "like a fluorescence or multiplex image, not H&E (if it is RGBA, name its channels "
                "c_coords=['r', 'g', 'b', 'a'])."
            )
        raise ValueError(f"The {source} has {n} channels; H&E needs 3 (RGB).")
    colours = [c for c in low if c in _RGB_NAMES]
    others = [shown[i] for i, c in enumerate(low) if c not in _RGB_NAMES and c not in _ALPHA_NAMES]
    alphas = [c for c in low if c in _ALPHA_NAMES]
    if not others and len(alphas) <= 1 and sorted(_RGB_NAMES[c] for c in colours) == [0, 1, 2]:
        return tuple(next(i for i, c in enumerate(low) if _RGB_NAMES.get(c) == k) for k in range(3))
    if others:
        raise ValueError(
            f"The {source} has channels {shown}: {others if others != shown else 'these'} are no red, green, "
            "blue or alpha channels, so it is a fluorescence or multiplex image, not H&E (RGB)."
        )
    raise ValueError(
        f"The {source} has channels {shown}: not one red, one green and one blue, so not H&E (RGB)."
    )


@dataclass(frozen=True)
class PixelRule:
    """How the pixels of one image become RGB ``uint8``: the same rule for every tile of that image.

    ``channels`` are the positions of red, green and blue along ``c`` (one position for a grayscale image,
    repeated to RGB); ``scale`` and ``rule`` come from :func:`dtype_rule` on a sample of the whole image.
    NaN and infinite pixel values (scanner padding) become background, white glass.
    """

    channels: tuple[int, ...]
    scale: float | None
    rule: str

    @property
    def read(self) -> slice:
        """The span of ``c`` to read (every channel the rule uses)."""
        return slice(min(self.channels), max(self.channels) + 1)

    def to_rgb(self, block: np.ndarray, background: int = 255) -> tuple[np.ndarray, int]:
        """``(3, h, w)`` uint8 of a ``(c, h, w)`` numpy block read over :attr:`read`, and how many of its
        pixels were NaN or infinite (set to ``background``)."""
        take = [c - self.read.start for c in self.channels]
        if take != list(range(block.shape[0])):
            block = block[take]
        bad = 0
        if self.scale is not None:
            finite = np.isfinite(block) if block.dtype.kind == "f" else None
            if finite is not None and not finite.all():
                holes = ~finite.all(0)
                bad = int(holes.sum())
                block = np.where(finite, block, 0)
            block = np.clip(np.round(block.astype(np.float32) * np.float32(self.scale)), 0, 255).astype(
                np.uint8
            )
            if bad:
                block[:, holes] = background
        if block.shape[0] == 1:  # grey: replicate so that encoders see RGB
            block = np.repeat(block, 3, axis=0)
        return block, bad


def pixel_rule(data: Any, sample_from: Any = None, *, source: str = "image", grey: bool = True) -> PixelRule:
    """The :class:`PixelRule` of an image element level ``data`` (an xarray ``(c, y, x)`` DataArray, or an
    array with positional channels).

    The channels come from ``data``'s ``c`` coordinate (:func:`rgb_channels`); the dtype rule from a strided
    sample of ``sample_from`` (default ``data``), a level of the same image small enough to sample cheaply.
    """
    names = (
        data.coords["c"].values if hasattr(data, "coords") and "c" in data.coords else range(data.shape[0])
    )
    channels = rgb_channels(list(names), data.dtype, source, grey=grey)
    ref = data if sample_from is None else sample_from
    raw = getattr(ref, "data", ref)
    c_axis = list(ref.dims).index("c") if hasattr(ref, "dims") else 0
    spatial = tuple(i for i in range(raw.ndim) if i != c_axis)

    def sample() -> np.ndarray:
        step = [1] * raw.ndim
        for ax in spatial:
            step[ax] = max(1, raw.shape[ax] // _RANGE_SAMPLE_SIDE)
        sub = raw[tuple(slice(None, None, k) for k in step)]
        # synchronous: this may run in a dask worker thread, which must never wait on its own cluster
        sub = np.asarray(sub.compute(scheduler="synchronous") if hasattr(sub, "compute") else sub)
        return np.take(sub, list(channels), axis=c_axis)

    scale, rule = dtype_rule(data.dtype, sample, source)
    if channels[:3] != (0, 1, 2) and len(channels) == 3:
        rule += f"; channels {[str(n) for n in names]} read as RGB"
    return PixelRule(channels=channels, scale=scale, rule=rule)


def _array_lib(arr: Any):
    if type(arr).__module__.startswith("dask"):
        import dask.array as da

        return da
    return np


def as_rgb_cyx(image: Any) -> Any:
    """Return a ``(c, y, x)`` uint8 RGB array (numpy or dask) from ``(y, x, c)``/``(c, y, x)`` input.

    Non-8-bit images are rescaled by :func:`to_uint8` (integers by the range of their data, floats in ``[0, 1]`` or
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
