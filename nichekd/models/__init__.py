"""Model objects (sklearn-like fit/predict/save/load) behind the scanpy-style functions."""

# one import line per module below
from ._position import RelativePositionEncoding, fourier_position_features
from .student import NicheStudent
from .teacher import NicheTeacher
