"""nichekd: transcriptomics-grade tissue niches from plain H&E.

>>> import nichekd as nk
>>> sdata = nk.datasets.synthetic_tissue(n_cells=5000, random_state=0)
"""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, io, models, pl, pp, tl

try:
    __version__ = version("nichekd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["datasets", "io", "models", "pl", "pp", "tl", "__version__"]
