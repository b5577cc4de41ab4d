"""Parameter documentation shared by the public functions: each parameter is described once, here.

A docstring lists a shared parameter by its name and, as the description, a line ``%(name)s``;
:func:`inject_docs` replaces that line with the text below (squidpy does the same with docrep)::

    table_key
        %(table_key)s
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

PARAMS: dict[str, str] = {
    "sdata": """\
:class:`~spatialdata.SpatialData` as spatialdata-io, a nichekd reader or ``spatialdata.read_zarr`` gives it
(coordinates, units and images are read from its elements), or its table alone.""",
    "table_key": """\
Table of ``sdata`` holding the spots/cells.""",
    "library_key": """\
``obs`` column naming each observation's tissue section; neighbourhoods never cross sections. Default: the
``"library"`` column when present, else one section per annotated element (the table's region key).""",
    "teacher_key": """\
``obs`` column of the reference niches (the teacher's, or any labels to compare with); probabilities and
logits are read from ``obsm[f"{teacher_key}_proba"]`` / ``obsm[f"{teacher_key}_logits"]``.""",
    "features_key": """\
``obsm`` key of the histology features (from :func:`nichekd.pp.histology_features`).""",
    "split_key": """\
``obs`` column of the split (``"train"``, ``"test"``, ``"buffer"``; written by :func:`nichekd.pp.spatial_split`).""",
    "random_state": """\
Seed: the same seed gives the same result.""",
    "device": """\
Torch device: ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"``, ...""",
    "progress": """\
Show progress bars.""",
    "save": """\
File to write the figure to (format from the extension).""",
    "show": """\
Show the figure; ``None`` shows it unless ``ax`` was given.""",
    "figsize": """\
Figure size in inches.""",
    "coordinate_system": """\
Coordinate system to work in (default: the one holding the spots' H&E image).""",
    "microns_per_unit": """\
Microns per unit of that coordinate system, where the object does not record it (see
:func:`nichekd.pp.set_units`).""",
    # several parameters at once: a placeholder on the line of the parameter names
    "figure": """\
ax
    Axes to draw into (for spatial maps, one per library and key).
save
    File to write the figure to (format from the extension).
show
    Show the figure; ``None`` shows it unless ``ax`` was given.
figsize
    Figure size in inches.""",
    "copy": """\
Return a modified copy of the table instead of writing into it (then ``None`` is returned).""",
    "overwrite": """\
Also replace keys this call writes that hold another function's results or data nichekd did not write (the
user's). Without it such keys are refused before anything is written (a ``ValueError`` naming them); re-running
this function on its own keys replaces them, as in scanpy, and the run records what it replaced
(``params['replaced']``). The table's region and instance keys are never replaced.""",
}


def inject_docs(func: F) -> F:
    """Replace ``%(name)s`` lines of ``func.__doc__`` with :data:`PARAMS` entries, keeping the indentation."""
    doc = func.__doc__
    if not doc:
        return func

    def fill(match: re.Match) -> str:
        indent, name = match.group(1), match.group(2)
        if name not in PARAMS:
            raise KeyError(f"{func.__qualname__}: no shared documentation for parameter {name!r}.")
        return textwrap.indent(PARAMS[name], indent)

    func.__doc__ = re.sub(r"^([ \t]*)%\((\w+)\)s[ \t]*$", fill, doc, flags=re.MULTILINE)
    return func
