"""Preprocessing: histology features, spatial splits, cell types, tissue masks."""

# one import line per module below
