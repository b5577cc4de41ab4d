"""The same-method histology baseline on every shared real dataset: never a crash on real features."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import dataset_path

import nichekd as nk

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _load(name: str):
    d = dataset_path(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "st_mob":
            return nk.datasets.st_mob(d.parent), 300.0
        if name == "visium_hd_kidney_crop":
            return nk.datasets.visium_hd_kidney_crop(d.parent), 64.0
        if name == "visium_mouse_brain":
            return nk.io.read_visium(d, counts="raw"), 150.0
        if name == "visium_tiny":
            return nk.io.read_visium(d), 150.0
        if name == "xenium_hest_tiny":
            return nk.io.read_hest(d / "NCBI858.h5ad", d / "NCBI858.jpg"), 32.0
        return nk.datasets.dlpfc(d.parent), 150.0  # lowres H&E, ~12.7 um/px: the features that crashed


@pytest.mark.parametrize(
    "name",
    [
        "st_mob",
        "visium_hd_kidney_crop",
        "visium_mouse_brain",
        "visium_tiny",
        "xenium_hest_tiny",
        "dlpfc_donor1",
    ],
)
def test_same_method_baseline_runs_on_real_features(name):
    sdata, patch_um = _load(name)
    t = sdata["table"]
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=patch_um, key_added="he", device="cpu",
                             standardize="library")  # fmt: skip
    torch.set_num_threads(1)
    k = 3 if t.n_obs < 500 else 5
    histology_baseline = nk.tl.histology_baseline
    histology_baseline(sdata, method="teacher", n_niches=k, features_key="he", teacher_method="aggregate")
    params = t.uns["he_teacher_niche"]["params"]
    assert t.obs["he_teacher_niche"].notna().all() and t.obs["he_teacher_niche"].nunique() >= 2, params
    assert params["covariance_type"] in ("full", "diag") and np.isfinite(params["radius_um"])
