"""histology_baseline: Leiden bisected to K, k-means, the teacher's method on image features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from test_distill_data import toy_tissue

from nichekd.tl import histology_baseline


def _ari(t, key):
    return adjusted_rand_score(t.obs["teacher_niche"].astype(str), t.obs[key].astype(str))


def test_kmeans_and_neighbourhood_features_help():
    t = toy_tissue(n=1200).tables["table"]
    histology_baseline(t, method="kmeans", n_niches=4, features_key="feats", key_added="own")
    histology_baseline(
        t, method="kmeans", n_niches=4, features_key="feats", neighbourhood=True, key_added="nb"
    )
    assert list(t.obs["own"].cat.categories) == ["C0", "C1", "C2", "C3"]
    assert t.uns["nb"]["params"]["radius_um"] > 0
    # neighbourhood means average the per-cell noise away
    assert _ari(t, "nb") > _ari(t, "own") + 0.1
    again = histology_baseline(
        t, method="kmeans", n_niches=4, features_key="feats", neighbourhood=True, key_added="nb", copy=True
    )
    assert (again.obs["nb"] == t.obs["nb"]).all()


def test_leiden_is_bisected_to_k_clusters():
    t = toy_tissue(n=800).tables["table"]
    histology_baseline(t, method="leiden", n_niches=4, features_key="feats", neighbourhood=True)
    assert t.obs["he_leiden_niche"].nunique() == 4
    assert (
        t.uns["he_leiden_niche"]["params"]["n_found"] == 4
        and t.uns["he_leiden_niche"]["params"]["resolution"] > 0
    )
    assert _ari(t, "he_leiden_niche") > 0.3


def test_leiden_on_a_subsample_agrees_with_the_full_graph():
    # large sections: Leiden on max_cells, the rest by nearest centroid; close to Leiden on every cell
    t = toy_tissue(n=1200).tables["table"]
    histology_baseline(
        t, method="leiden", n_niches=4, features_key="feats", neighbourhood=True, key_added="all"
    )
    histology_baseline(
        t,
        method="leiden",
        n_niches=4,
        features_key="feats",
        neighbourhood=True,
        key_added="sub",
        max_cells=400,
    )
    assert t.uns["sub"]["params"]["max_cells"] == 400 and t.obs["sub"].nunique() == 4
    assert adjusted_rand_score(t.obs["all"].astype(str), t.obs["sub"].astype(str)) > 0.6


def test_teacher_method_on_image_features():
    pytest.importorskip("nichekd.tl._teacher")
    t = toy_tissue(n=800).tables["table"]
    teacher_before = t.obs["teacher_niche"].copy()
    histology_baseline(t, method="teacher", n_niches=4, features_key="feats")
    assert t.obs["teacher_niche"].equals(teacher_before)  # the real teacher is left alone
    assert t.obs["he_teacher_niche"].nunique() == 4
    assert list(t.obs["he_teacher_niche"].cat.categories) == [
        "C0",
        "C1",
        "C2",
        "C3",
    ]  # not the teacher's names
    params = t.uns["he_teacher_niche"]["params"]
    assert params["teacher_method"] == "aggregate"  # no method recorded: the mixture
    assert params["covariance_type"] == "full" and params["reg_covar"] > 0
    assert params["n_components"] == min(32, t.obsm["feats"].shape[1])
    assert "he_teacher_niche_proba" not in t.obsm  # only the labels are written
    assert _ari(t, "he_teacher_niche") > 0.3


def test_same_method_baseline_repeats_a_transformer_teacher_and_survives_degenerate_features():
    t = toy_tissue(n=600).tables["table"]
    t.uns["teacher_niche"]["params"]["method"] = "transformer"
    histology_baseline(t, method="teacher", n_niches=4, features_key="feats", key_added="tr")
    assert t.uns["tr"]["params"]["teacher_method"] == "transformer"
    assert t.obs["tr"].nunique() >= 2
    # collinear, low-rank features (as lowres H&E gives): the full-covariance mixture must not crash
    rng = np.random.default_rng(0)
    base = rng.normal(size=(t.n_obs, 2)).astype(np.float32)
    t.obsm["flat"] = np.hstack([base, base * 2, base[:, :1] * 0 + 1.0, np.round(base, 0)])
    histology_baseline(t, method="teacher", n_niches=4, features_key="flat", teacher_method="aggregate",
                       key_added="flat_niche")  # fmt: skip
    assert t.obs["flat_niche"].notna().all()
    with pytest.raises(ValueError, match="teacher_method"):
        histology_baseline(t, method="teacher", n_niches=4, features_key="feats", teacher_method="gmm")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"features_key": "nope"}, "histology_features"),
        ({"method": "dbscan"}, "method"),
        ({"n_niches": 1}, "n_niches"),
    ],
)
def test_bad_input_writes_nothing(kwargs, error):
    t = toy_tissue(n=300).tables["table"]
    before = set(t.obs.columns)
    with pytest.raises((KeyError, ValueError), match=error):
        histology_baseline(t, **{"method": "kmeans", "n_niches": 4, "features_key": "feats", **kwargs})
    assert set(t.obs.columns) == before
    t.obsm["feats"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        histology_baseline(t, method="kmeans", n_niches=4, features_key="feats")
