"""Plots: niche maps over the H&E, compositions, agreement, training curves."""

# one import line per module below
from ._agreement import agreement
from ._annotation_probe import annotation_probe
from ._composition import compare_compositions, composition, composition_null
from ._k_sweep import k_sweep
from ._niche_map import niche_map
from ._palette import niche_palette, set_niche_colors
from ._training import training
from ._uncertainty import uncertainty
