"""Datasets: the embedded synthetic tissue (the default data) and loaders of public samples."""

# one import line per module below
