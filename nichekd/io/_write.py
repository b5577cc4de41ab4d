"""Writes that cannot lose data: a zarr store is written beside its destination and swapped in when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any


def write(sdata: Any, path: str | Path, *, overwrite: bool = False, **kwargs: Any) -> Path:
    """Write a SpatialData object to a zarr store without ever leaving a half-written or lost store.

    The object is written to a temporary sibling of ``path`` (same folder, so the final move is a rename on
    one file system). Only when that write has finished is the previous store (if any) moved aside, the new
    one renamed to ``path`` and the previous one deleted. If anything fails or is interrupted (an unwritable
    ``uns`` entry, a full disk, Ctrl-C) the temporary store is removed and the previous store at ``path`` is
    left as it was, readable. ``spatialdata``'s own ``write(overwrite=True)`` deletes the old store first.

    Parameters
    ----------
    sdata
        The :class:`~spatialdata.SpatialData` object.
    path
        Destination zarr store (a folder, e.g. ``"tissue.zarr"``).
    overwrite
        Replace an existing store at ``path`` (atomically, as above). Without it an existing path is refused.
    **kwargs
        Passed to :meth:`spatialdata.SpatialData.write` (e.g. ``consolidate_metadata``).

    Returns
    -------
    The path written. ``sdata.path`` is set to it, as ``SpatialData.write`` does.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.synthetic_tissue(n_cells=500, seed=0)  # doctest: +SKIP
    >>> nk.io.write(sdata, "tissue.zarr", overwrite=True)  # doctest: +SKIP
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists; pass overwrite=True to replace it (the replacement is atomic)."
        )
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is a file, not a zarr store; remove it or choose another path.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder {path.parent} of {path} does not exist; create it first.")
    for key in ("overwrite", "update_sdata_path", "file_path"):
        if key in kwargs:
            raise TypeError(f"nk.io.write sets {key!r} itself; do not pass it.")
    token = uuid.uuid4().hex[:8]
    tmp = path.with_name(f".{path.name}.writing-{token}")
    old = path.with_name(f".{path.name}.replaced-{token}")
    try:
        sdata.write(tmp, overwrite=False, update_sdata_path=False, **kwargs)
        if path.exists():
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous store back
                raise
        else:
            os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    sdata.path = path
    return path
