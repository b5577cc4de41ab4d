"""Preprocessing: histology features, spatial splits, cell types, tissue masks."""

# one import line per module below
from ._split import spatial_split
from ._tissue import tissue_mask, tissue_tiles
from ._cell_types import cell_types
from ._features import histology_features
from ..models.encoders import list_backbones
from ._augment import augmented_features
from ._features_dask import histology_features_dask
from ._units import set_units
from ._scvi import scvi_latent
from ._bins import aggregate_bins
