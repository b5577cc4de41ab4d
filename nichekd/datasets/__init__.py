"""Datasets: the embedded synthetic tissue (the default data) and loaders of public samples."""

# one import line per module below
from ._dlpfc import dlpfc
from ._public import cache_dir, resolve_data_dir, st_mob, visium_hd_kidney_crop
from ._synthetic import synthetic_tissue
