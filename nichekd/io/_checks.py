"""Validation shared by the readers: files, images, count matrices, barcodes and spot positions.

Every check raises *before* a reader builds anything, with a message that names the file or field and the fix.
"""

from __future__ import annotations

import contextlib
import csv
import json
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._core.validate import check_counts as _check_counts

# Standard deviation (uint8 grey levels) below which an image is treated as a blank placeholder.
BLANK_STD = 2.0
# Pixels sampled per axis when testing an image for blankness (keeps dask images lazy).
_SAMPLE_SIDE = 512


def require_file(path: str | Path, what: str, hint: str = "") -> Path:
    """Return ``path`` if it exists, else raise naming it, what it should hold and what is beside it."""
    path = Path(path)
    if path.exists():
        return path
    parent = path.parent
    beside = sorted(p.name for p in parent.iterdir())[:20] if parent.is_dir() else []
    where = (
        f" The folder {parent} holds: {beside}."
        if parent.is_dir()
        else f" The folder {parent} does not exist."
    )
    raise FileNotFoundError(f"Missing {what}: {path}.{where} {hint}".rstrip())


def find_first(folder: str | Path, candidates: Sequence[str], what: str, hint: str = "") -> Path:
    """The first of ``candidates`` (names or glob patterns, relative to ``folder``) that exists."""
    folder = Path(folder)
    for name in candidates:
        hits = sorted(folder.glob(name)) if any(c in name for c in "*?[") else [folder / name]
        hits = [h for h in hits if h.exists()]
        if hits:
            return hits[0]
    beside = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else "(folder missing)"
    raise FileNotFoundError(
        f"Missing {what} in {folder}: looked for {list(candidates)}; the folder holds {beside}. {hint}".rstrip()
    )


# Parser failures that mean "this file is not in the expected format" (FileNotFoundError and PermissionError
# already name the file and pass through unchanged).
PARSER_ERRORS = (
    UnicodeDecodeError, EOFError, zlib.error, pd.errors.ParserError, pd.errors.EmptyDataError,
    json.JSONDecodeError, OSError, IndexError, ZeroDivisionError, struct.error, csv.Error, KeyError,
    TypeError, ValueError, RuntimeError,
)  # fmt: skip
# Largest image read into memory (PNG/JPEG have no tiles): 250 Mpx is ~750 MB of RGB.
MAX_IN_MEMORY_PIXELS = 250_000_000
_PIL_LOCK = threading.Lock()


class ReaderError(ValueError):
    """A file could not be parsed in the format a reader expects (names the file and the format)."""


@contextlib.contextmanager
def parsing(path: str | Path, expected: str) -> Iterator[None]:
    """Turn any parser failure inside the block into a :class:`ReaderError` naming ``path`` and ``expected``.

    Every reader wraps its file reads in it, so that e.g. a PNG given as a count matrix, a truncated gzip, an
    empty file or a non-HDF5 ``.h5`` give "Cannot read <file> as <format>" instead of a bare parser error.

    Examples
    --------
    >>> with parsing("counts.tsv", "a tab-separated count matrix"):  # doctest: +SKIP
    ...     pd.read_csv("counts.tsv", sep="\t")
    """
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError, ReaderError):
        raise
    except PARSER_ERRORS as err:
        size = Path(path).stat().st_size if Path(path).is_file() else None
        detail = " (the file is empty)" if size == 0 else ""
        raise ReaderError(
            f"Cannot read {path} as {expected}{detail}: {type(err).__name__}: {err}. Check that the file is "
            "complete (not truncated) and is the one the reader expects."
        ) from err


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object (dict) from a file, with the file named on failure."""
    path = require_file(path, what)
    with parsing(path, f"{what} (a JSON object)"), open(path, encoding="utf-8") as fh:
        out = json.load(fh)
    if not isinstance(out, dict):
        raise ReaderError(f"{what} {path} holds a JSON {type(out).__name__}, not an object of named fields.")
    return out


def positive_field(record: dict[str, Any], field: str, source: str | Path) -> float:
    """``record[field]`` as a finite positive float, else an error naming the field and the file."""
    if field not in record:
        raise KeyError(f"{source} lacks the field {field!r}.")
    try:
        value = float(record[field])
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(
            f"{source}: {field} = {record[field]!r} is not a positive number; the scale factors are damaged. "
            "Restore the file from the instrument's output (or pass mpp= explicitly)."
        )
    return value


def check_unique_ids(ids: pd.Index, source: str | Path, what: str = "barcodes") -> None:
    """Raise if ``ids`` repeat (a positions list with one barcode twice cannot be matched to counts)."""
    if not ids.is_unique:
        dup = ids[ids.duplicated()].unique()
        raise ValueError(
            f"{source} lists {len(dup)} {what} more than once (e.g. {list(dup[:3])}); each must appear once. "
            "The file was concatenated or edited; use the original from the instrument's output."
        )


def open_pil(path: Path, what: str = "image"):
    """Open an image with Pillow after checking its size from the header (no pixel is decoded yet).

    Images above :data:`MAX_IN_MEMORY_PIXELS` are refused (PNG/JPEG cannot be read in tiles: convert them to
    a tiled pyramidal TIFF and use :func:`nichekd.io.read_wsi`). Pillow's decompression-bomb guard stays on:
    it is raised to this limit only while this one file is opened, under a lock, and restored afterwards.
    """
    from PIL import Image

    with _PIL_LOCK:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(before or 0, MAX_IN_MEMORY_PIXELS)
        try:
            with parsing(path, f"{what} (PNG, JPEG or TIFF)"):
                im = Image.open(path)
        except Image.DecompressionBombError as err:
            raise ValueError(
                f"{path}: {err}. Convert it to a tiled pyramidal TIFF and read it with read_wsi."
            ) from err
        finally:
            Image.MAX_IMAGE_PIXELS = before
    w, h = im.size
    if w * h > MAX_IN_MEMORY_PIXELS:
        im.close()
        raise ValueError(
            f"{path} is {w} x {h} px by its header ({w * h / 1e6:.0f} Mpx): too large to decode into memory "
            f"(limit {MAX_IN_MEMORY_PIXELS / 1e6:.0f} Mpx). Convert it to a tiled pyramidal TIFF (e.g. `vips "
            "tiffsave in.png out.tif --tile --pyramid`) and read it lazily with nk.io.read_wsi."
        )
    return im


def pil_to_rgb(im: Any, source: str | Path) -> np.ndarray:
    """``(y, x, 3)`` uint8 from an open Pillow image: 8-bit colour modes converted, 16-bit/float rescaled by
    :func:`nichekd._core.image.to_uint8`, grayscale repeated to RGB with a warning, bilevel refused."""
    from .._core.image import to_uint8

    mode = im.mode
    with parsing(source, "an image"):
        if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            return np.asarray(im.convert("RGB"))
        if mode == "1":
            raise ValueError(f"{source} is a bilevel (1-bit) image, a mask rather than an H&E scan.")
        arr = np.asarray(im.convert("L") if mode in ("L", "LA") else im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    arr, rule = to_uint8(arr, source=str(source))
    warnings.warn(
        f"{source} is a grayscale {mode!r} image ({rule}): converted to RGB by repeating the channel. Stain "
        "colour is lost, so colour-based features differ from those of a colour scan.",
        UserWarning,
        stacklevel=3,
    )
    return np.repeat(arr[..., None], 3, axis=2)


def read_image(path: str | Path, what: str = "image") -> Any:
    """Read an RGB image as ``(y, x, c)`` uint8: TIFFs lazily (dask, level 0), PNG/JPEG in memory.

    The size is read from the header first (huge PNG/JPEG are refused, see :func:`open_pil`); 16-bit and
    float images are rescaled to 8 bits by :func:`nichekd._core.image.to_uint8` (16-bit by its range) with a
    warning naming the rule; grayscale images become RGB with a warning.
    """
    from .._core.image import to_uint8

    path = require_file(path, what)
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith((".tif", ".tiff", ".btf")):
        import dask.array as da
        import tifffile
        import zarr

        with parsing(path, f"{what} (TIFF)"):
            store = tifffile.imread(path, aszarr=True, level=0)
            arr = da.from_zarr(zarr.open(store, mode="r"))
        arr = arr.squeeze() if arr.ndim > 3 else arr
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 2:
            arr = da.stack([arr] * 3, axis=2)
            warnings.warn(
                f"{path} is grayscale: converted to RGB by repeating the channel.", UserWarning, stacklevel=2
            )
        if arr.dtype != np.uint8:
            arr, rule = to_uint8(arr, source=str(path))
            warnings.warn(f"{path} is not 8-bit: rescaled to uint8 ({rule}).", UserWarning, stacklevel=2)
        return arr
    im = open_pil(path, what)
    try:
        with parsing(path, f"{what} (PNG or JPEG)"):
            im.load()
        return pil_to_rgb(im, path)
    finally:
        im.close()


def _sample(image: Any) -> np.ndarray:
    """A strided subsample of at most ``_SAMPLE_SIDE`` pixels per axis, as numpy."""
    step_y = max(1, image.shape[0] // _SAMPLE_SIDE)
    step_x = max(1, image.shape[1] // _SAMPLE_SIDE)
    return np.asarray(image[::step_y, ::step_x])


def is_blank(image: Any, tol: float = BLANK_STD) -> bool:
    """True if ``(y, x, c)`` ``image`` is empty or near-constant (a placeholder, e.g. all black)."""
    if image.size == 0 or min(image.shape[:2]) == 0:
        return True
    return float(_sample(image).astype(np.float32).std()) < tol


def check_image(image: Any, source: str | Path) -> None:
    """Raise if an image is not RGB, empty or blank."""
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"The image {source} must be RGB (y, x, 3), got shape {tuple(image.shape)}.")
    if is_blank(image):
        raise ValueError(
            f"The image {source} is empty or blank (near-constant pixels); it cannot be the H&E of this "
            "section. Point the reader at the real H&E image."
        )


def check_counts(x: Any, source: str | Path) -> None:
    """Raise unless ``x`` holds raw counts: finite, non-negative integers (the one rule of
    :func:`nichekd._core.validate.check_counts`, strict on integers: a reader reads raw count files)."""
    _check_counts(
        x,
        f"The count matrix from {source}",
        integers=True,
        fix="Pass the raw counts (e.g. the filtered_feature_bc_matrix, adata.raw or adata.layers['counts']).",
    )


def check_barcodes(
    counts_ids: pd.Index,
    position_ids: pd.Index,
    counts_source: Any,
    positions_source: Any,
    max_missing: float = 0.0,
) -> None:
    """Raise if more than a fraction ``max_missing`` of the count matrix's observations have no position."""
    missing = counts_ids.difference(position_ids)
    if len(missing) > max_missing * len(counts_ids) or len(missing) == len(counts_ids):
        raise ValueError(
            f"{len(missing)} of {len(counts_ids)} barcodes in {counts_source} have no position in "
            f"{positions_source} (e.g. {list(missing[:3])}); the two files belong to different samples or "
            "runs. Use the count matrix and positions from the same output folder."
        )


def check_on_image(
    xy_px: np.ndarray, shape_yx: Sequence[int], source: str | Path, tol_px: float = 1.0
) -> None:
    """Raise if positions ``(x, y)`` in pixels of an image of shape ``(y, x)`` fall outside it."""
    xy = np.asarray(xy_px, dtype=float)
    h, w = shape_yx[:2]
    out = (xy[:, 0] < -tol_px) | (xy[:, 1] < -tol_px) | (xy[:, 0] > w + tol_px) | (xy[:, 1] > h + tol_px)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(
            f"{int(out.sum())} of {len(xy)} positions fall outside the image {source} ({w} x {h} px), e.g. "
            f"(x={xy[i, 0]:.1f}, y={xy[i, 1]:.1f}); the positions and image do not match (wrong image, "
            "resolution or scale factor, or x/y swapped)."
        )


def check_min_obs(n: int, source: Any, minimum: int = 1) -> None:
    """Raise if fewer than ``minimum`` observations remain."""
    if n < minimum:
        raise ValueError(f"{source} has {n} observations after filtering; at least {minimum} are needed.")


def check_image_holds_observations(sdata: Any, table_key: str, source: str | Path) -> None:
    """Raise unless every library of a freshly read object has a usable H&E image under its spots/cells.

    The image is chosen as every nichekd function chooses it (:func:`nichekd._core.spatial.resolve`: the finest
    non-placeholder image of the coordinate system that holds the observations), so a reader fails here, naming
    the files, instead of a later step failing to find an image. Objects without any image pass (e.g. Xenium
    cells read without their H&E).
    """
    from .._core.spatial import is_placeholder, resolve

    images = sorted(getattr(sdata, "images", {}) or {})
    if not images:
        return
    ctx = resolve(sdata, table_key=table_key)
    missing = [name for name, lib in ctx.libraries.items() if lib.image is None]
    if not missing:
        return
    blank = [name for name in images if is_placeholder(sdata, name)]
    if len(blank) == len(images):
        raise ValueError(
            f"Every H&E image read from {source} is blank (constant placeholder pixels): {blank}. Provide the "
            "real tissue image (e.g. fullres_image=)."
        )
    raise ValueError(
        f"The positions of library {missing[0]!r} fall outside the image(s) {images} read from {source} (or "
        "only on blank placeholders); the positions and images do not match: wrong image, wrong scale factor "
        "(tissue_hires_scalef / tissue_lowres_scalef), wrong alignment, or x/y swapped."
    )
