"""The record of a feature set: which settings define the features, and the one way two records are compared.

``histology_features`` reuses features already in ``obsm`` only when their record matches, and
``predict_niches`` refuses features whose record differs from the model's: both read the lists below and
compare with :func:`same_setting`, so a setting cannot be checked in one place and forgotten in the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np

# settings of histology_features that determine the features
FEATURE_SETTINGS = ("backbone", "weights", "checkpoint_path", "patch_size_um", "input_size", "mpp", "mean", "std",
                    "stain_normalization", "stain_reference", "standardize", "grid_um")  # fmt: skip
# fitted on the data when not given: compared when a model is replayed on a slide, not when a cache is reused
FITTED_SETTINGS = ("stain_reference",)
# implied by a registered backbone, so histology_features records them only for custom encoders
IMPLIED_SETTINGS = ("input_size", "mpp", "mean", "std")
# name the data of one object: part of a cache's identity, never replayed onto another slide
NAMING_SETTINGS = ("features_key", "image_key", "shapes_key")

_RTOL, _ATOL = 1e-6, 1e-9


def same_setting(a: Any, b: Any) -> bool:
    """Whether two recorded values of a setting are the same (numbers within a relative 1e-6).

    Examples
    --------
    >>> same_setting([0.485, 0.456], (0.485, 0.456))
    True
    >>> same_setting({"method": "macenko"}, {"method": "reinhard"})
    False
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(same_setting(a[k], b[k]) for k in a)
    if _is_number(a) and _is_number(b):
        return bool(np.isclose(float(a), float(b), rtol=_RTOL, atol=_ATOL))
    if isinstance(a, list | tuple | np.ndarray) and isinstance(b, list | tuple | np.ndarray):
        a, b = np.asarray(a, dtype=object).ravel(), np.asarray(b, dtype=object).ravel()
        return len(a) == len(b) and all(same_setting(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def resolve_features_key(adata: ad.AnnData, features_key: str | None) -> str:
    """``features_key``, or the only ``obsm`` entry written by ``nk.pp.histology_features``."""
    if features_key is not None:
        return features_key
    found = [
        k for k in adata.obsm.keys()
        if isinstance(adata.uns.get(k), dict) and "backbone" in adata.uns[k].get("params", {})
    ]  # fmt: skip
    if len(found) != 1:
        raise KeyError(
            f"Pass features_key=: {'no' if not found else len(found)} histology feature sets found in obsm "
            f"({found}); compute them with nk.pp.histology_features(sdata, key_added=...)."
        )
    return found[0]
