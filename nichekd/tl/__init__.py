"""Tools: teacher niches, distillation, prediction, baselines, evaluation."""

# one import line per module below
