"""Readers into nichekd's standard SpatialData layout.

.. include the layout description from nichekd._layout
"""

from .._layout import __doc__ as _layout_doc

__doc__ = (__doc__ or "").split("..")[0] + (_layout_doc or "")

# readers (one module each) are imported below
from ._concatenate import concatenate
from ._hest import read_anndata_image, read_hest
from ._st import read_st
from ._visium import read_visium
from ._visium_hd import read_visium_hd
from ._xenium import read_xenium
from ._wsi import read_wsi
from ._write import write
