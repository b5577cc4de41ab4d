"""Readers into nichekd's standard SpatialData layout.

.. include the layout description from nichekd._layout
"""

from .._layout import __doc__ as _layout_doc

__doc__ = (__doc__ or "").split("..")[0] + (_layout_doc or "")

# readers (one module each) are imported below
