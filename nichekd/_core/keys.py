"""Every default key and element-naming rule nichekd uses (tables, columns, elements, suffixes)."""

from __future__ import annotations

import re

TABLE_KEY = "table"

LIBRARY_KEY = "library"

REGION_KEY = "region"

INSTANCE_KEY = "instance_id"

SPATIAL_KEY = "spatial"

SPLIT_KEY = "split"

UNITS = "micrometer"

KINDS = ("spot", "cell", "tile")


def image_name(library: str) -> str:
    """Name of a library's H&E image element."""
    return f"{library}_he"


def shapes_name(library: str, kind: str = "spot") -> str:
    """Name of a library's spots/cells/tiles shapes element."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    return f"{library}_{kind}s"


def features_key(backbone_name: str) -> str:
    """The default ``obsm`` key of features from a backbone: ``X_<name>``, characters zarr refuses made ``_``.

    Takes the backbone's registered name (``BackboneSpec.name``), never a module's ``repr``.

    Examples
    --------
    >>> features_key("hf-hub:MahmoodLab/UNI2-h")
    'X_hf-hub_MahmoodLab_UNI2-h'
    """
    # every character spatialdata cannot write to zarr (":" and "/" of hub names, "<locals>" of a class defined
    # in a function) becomes "_"
    return "X_" + re.sub(r"[^A-Za-z0-9_.-]", "_", str(backbone_name))
