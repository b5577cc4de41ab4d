"""Plots: niche maps over the H&E, compositions, agreement, training curves."""

# one import line per module below
