"""evaluate: direct scoring of the student, Hungarian matching of baselines, compositions, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from nichekd.tl import evaluate
from nichekd.tl._evaluate import match_labels


def _table(seed=0):
    rng = np.random.default_rng(seed)
    n = 600
    truth = rng.integers(0, 3, n)
    t = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
    t.obs["teacher_niche"] = pd.Categorical([f"N{i}" for i in truth], categories=["N0", "N1", "N2"])
    t.obs["perfect"] = t.obs["teacher_niche"].copy()
    # a relabelled copy with 10% noise: perfect after matching except the noise
    perm = np.array([2, 0, 1])
    noisy = perm[truth]
    flip = rng.random(n) < 0.1
    noisy[flip] = rng.integers(0, 3, flip.sum())
    t.obs["cluster"] = pd.Categorical([f"C{i}" for i in noisy])
    t.obs["split"] = pd.Categorical(np.where(np.arange(n) < 400, "train", "test"))
    t.obs["cell_type"] = pd.Categorical([f"T{(i + (rng.random() < 0.3)) % 3}" for i in truth])
    return t


def test_perfect_and_matched_predictions():
    t = _table()
    df = evaluate(t, predictions=["perfect", "cluster"], cell_type_key="cell_type")
    assert list(df.index) == ["perfect", "cluster"]
    assert df.loc["perfect", "ari"] == pytest.approx(1.0) and df.loc["perfect", "accuracy"] == 1.0
    assert not df.loc["perfect", "matched"] and df.loc["cluster", "matched"]
    assert df.loc["perfect", "composition_jsd"] == pytest.approx(0.0, abs=1e-12)
    te = t.obs["split"] == "test"
    assert df.loc["cluster", "n_cells"] == te.sum()
    # accuracy after matching = share of unflipped-or-lucky cells
    mapping = {"C2": "N0", "C0": "N1", "C1": "N2"}
    expected = (
        t.obs["cluster"][te].map(mapping).astype(str) == t.obs["teacher_niche"][te].astype(str)
    ).mean()
    assert df.loc["cluster", "accuracy"] == pytest.approx(expected)
    assert 0.85 < df.loc["cluster", "accuracy"] < 1.0
    assert {"f1_N0", "f1_N1", "f1_N2", "macro_f1", "nmi"} <= set(df.columns)
    assert df.loc["cluster", "composition_jsd"] > 0


def test_matching_handles_extra_clusters():
    truth = np.array(["a"] * 5 + ["b"] * 5)
    pred = np.array(["x"] * 4 + ["z"] + ["y"] * 5)
    assert match_labels(truth, pred) == {"x": "a", "y": "b", "z": "a"}


def test_all_cells_without_split():
    t = _table()
    df = evaluate(t, predictions="cluster", split_key=None)
    assert df.loc["cluster", "n_cells"] == t.n_obs


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"predictions": ["nope"]}, "nope"),
        ({"teacher_key": "nope"}, "nope"),
        ({"split_key": "nope"}, "spatial_split"),
        ({"split": "validation"}, "No cells"),
        ({"cell_type_key": "nope"}, "cell types"),
    ],
)
def test_bad_input(kwargs, error):
    with pytest.raises((KeyError, ValueError), match=error):
        evaluate(_table(), **{"predictions": ["cluster"], **kwargs})
