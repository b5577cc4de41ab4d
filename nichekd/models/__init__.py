"""Model objects (sklearn-like fit/predict/save/load) behind the scanpy-style functions."""

# one import line per module below
