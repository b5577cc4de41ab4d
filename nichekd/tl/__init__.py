"""Tools: teacher niches, distillation, prediction, baselines, evaluation."""

# one import line per module below
from ._distill import distill
from ._predict import predict_niches
from ._baselines import histology_baseline
from ._evaluate import evaluate, verdict
from ._teacher import teacher_niches
from ._k_sweep import niche_k_sweep
from ._composition import compare_compositions, match_niches, niche_composition
from ._cross_validate import cross_validate
from ._predict_dask import predict_niches_dask
from ._annotation_probe import annotation_probe
