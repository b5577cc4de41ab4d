"""Sphinx configuration: API reference from the docstrings, tutorials as pre-executed notebooks (offline)."""

import shutil
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent

project = "nichekd"
author = "nichekd developers"
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
autosummary_generate = True
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
# notebooks are executed by `make test`; the docs render their stored outputs and never run them
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = "nichekd"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]

# the tutorials live at the top of the repository; mirror them into the source tree for the build
_dst = HERE / "tutorials"
_dst.mkdir(exist_ok=True)
for nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(nb, _dst / nb.name)

# the paper-protocol notebook lives in notebooks/; mirror it too
_dst_nb = HERE / "notebooks"
_dst_nb.mkdir(exist_ok=True)
for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copy2(nb, _dst_nb / nb.name)
