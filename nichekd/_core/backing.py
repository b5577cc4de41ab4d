"""The files a lazily read object still reads from: deleted ones are named before anything reads or writes.

``spatialdata.read_zarr`` reads images, labels and points lazily (dask): their pixels stay in the store until
they are computed. When that store is deleted or moved, zarr reads the missing chunks as its fill value, so an
image silently reads as a blank (all-black) placeholder and a mask as background. Every nichekd function that
reads pixels, and :func:`nichekd.io.write`, checks the files first (:func:`check_backing_files`).
"""

from __future__ import annotations

import os
from typing import Any


def missing_backing_files(obj: Any) -> list[str]:
    """The local files or folders that ``obj`` (a SpatialData object, an element, or one level of an image
    element) is read lazily from and that no longer exist; empty where nothing is missing, for objects held in
    memory, and for remote stores (``s3://...``), which are not checked."""
    try:
        from spatialdata import get_dask_backing_files

        files = get_dask_backing_files(obj)
    except (ImportError, TypeError, ValueError, AttributeError):  # not an element, or an older spatialdata
        return []
    return sorted({str(f) for f in files if "://" not in str(f) and not os.path.exists(f)})


def check_backing_files(obj: Any, subject: str, consequence: str) -> None:
    """Raise ``FileNotFoundError`` when files ``obj`` is read lazily from no longer exist.

    ``subject`` names what is read (``"The image 'he' is"``, ``"Elements of this SpatialData object are"``) and
    ``consequence`` what cannot be done (``"so its pixels cannot be read"``).
    """
    missing = missing_backing_files(obj)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise FileNotFoundError(
            f"{subject} read lazily from files that no longer exist ({shown}): the store was deleted or moved "
            f"after it was read and its data were never loaded, {consequence}. Read or build the object again "
            "from its source (spatialdata.read_zarr on a store that exists, or the reader that made it)."
        )


def check_element_files(element: Any, kind: str, name: str) -> None:
    """:func:`check_backing_files` for one image or labels element (its coarsest level: every level of an
    element lives in the element's one folder, and the coarsest has the smallest graph to search)."""
    from xarray import DataTree

    level = element
    if isinstance(element, DataTree):
        from spatialdata import get_pyramid_levels

        level = list(get_pyramid_levels(element))[-1]
    what = "pixels" if kind == "image" else "labels"
    check_backing_files(
        level,
        f"The {kind} {name!r} is",
        f"so its {what} cannot be read (zarr would read them as a blank placeholder)",
    )
