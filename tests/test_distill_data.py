"""A small tissue for the distillation tests: niches are spatial patches, features are noisy per cell."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from nichekd.io._build import build_library


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: more threads only add contention (10x slower measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_tissue(
    n: int = 1500, d: int = 32, k: int = 4, noise: float = 2.5, seed: int = 0, logits: bool = True
):
    """SpatialData with obs['teacher_niche'], teacher logits, obsm['feats'] and a strip split."""
    from nichekd.pp import spatial_split

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 800, (n, 2))
    niche = ((xy[:, 0] // 200).astype(int) + (xy[:, 1] // 400).astype(int)) % k
    centres = rng.normal(size=(k, d))
    feats = (centres[niche] + rng.normal(scale=noise, size=(n, d))).astype(np.float32)
    a = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
    a.obs_names = [f"c{i}" for i in range(n)]
    sdata = build_library(a, library="L1", xy_um=xy, diameter_um=10, kind="cell")
    t = sdata.tables["table"]
    t.obs["teacher_niche"] = pd.Categorical([f"N{i}" for i in niche], categories=[f"N{i}" for i in range(k)])
    if logits:
        t.obsm["teacher_niche_logits"] = (4.0 * np.eye(k)[niche] + rng.normal(scale=0.5, size=(n, k))).astype(
            np.float32
        )
    t.obsm["feats"] = feats
    t.uns["feats"] = {"params": {"backbone": "toy", "patch_size_um": 40.0}}
    t.uns["teacher_niche"] = {"params": {"radius_um": 45.0, "n_neighbors_target": 10}}
    spatial_split(sdata)
    return sdata
