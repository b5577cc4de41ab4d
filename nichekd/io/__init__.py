"""Readers.

``read_visium``, ``read_visium_hd`` and ``read_xenium`` are thin adapters over spatialdata-io's readers: they
return spatialdata-io's objects (pixel coordinate systems included; nichekd functions find the microns
themselves) and add clear errors, ``in_tissue`` filtering and the options nichekd needs. ``read_st``,
``read_hest``, ``read_anndata_image`` and ``read_wsi`` read what spatialdata-io has no reader for, into the
layout below. To join sections use
``spatialdata.concatenate(parts, concatenate_tables=True, uns_merge="unique")``.

The readers of nichekd's layout turn pixels into RGB ``uint8`` by the one rule of
``nichekd._core.image.to_uint8``, the rule nichekd functions apply to any image element (spatialdata-io's
included): ``uint8`` images are kept bit for bit; other integer images are scaled by the range their data were
recorded in, read from a sample of the whole image (8-bit values in any integer type kept, 12-bit data in a
16-bit file ``x * 255 / 4095``, full-range 16-bit data ``x * 255 / 65535``); floats as ``[0, 1]`` or
``[0, 255]``. The rule applied is named in a warning.

.. include the layout description from nichekd.io._build
"""

from ._build import __doc__ as _layout_doc

__doc__ = (__doc__ or "").split("..")[0] + (_layout_doc or "")

# readers (one module each) are imported below
from ._hest import read_anndata_image, read_hest
from ._st import read_st
from ._visium import read_visium
from ._visium_hd import read_visium_hd
from ._xenium import read_xenium
from ._wsi import read_wsi
from ._write import recover, write
