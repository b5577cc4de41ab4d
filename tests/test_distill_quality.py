"""End-to-end quality: the student against the histology-only baselines on the same features.

Thresholds come from measured runs (see the final report / README): the synthetic claim is the paper's
(student ARI at least twice the best baseline's on the test strip), the real-data claim is that the student
beats every baseline on whole held-out sections of the mouse olfactory bulb.
"""

from __future__ import annotations

import pytest
from conftest import dataset_path
from test_distill_data import one_torch_thread  # noqa: F401

import nichekd as nk

BACKBONE = "stain"  # cheap, offline encoder: keeps this test within seconds on 2 CPU cores
BASELINES = [("leiden", False), ("leiden", True), ("kmeans", False), ("kmeans", True), ("teacher", False)]


def _features_available():
    if not hasattr(nk.pp, "histology_features") or not hasattr(nk.tl, "teacher_niches"):
        pytest.skip("nk.pp.histology_features / nk.tl.teacher_niches not available yet")


def _scores(sdata, k, features_key="he_features"):
    """Test-strip scores of the MLP student and of every baseline (each method, with and without
    neighbourhood features; the teacher's method aggregates neighbourhoods itself)."""
    preds = ["student_niche"]
    nk.tl.distill(sdata, features_key=features_key, architecture="mlp", progress=False)
    for method, neighbourhood in BASELINES:
        key = f"he_{method}{'_nb' if neighbourhood else ''}_niche"
        nk.tl.histology_baseline(
            sdata, method=method, n_niches=k, features_key=features_key, neighbourhood=neighbourhood,
            key_added=key,
        )  # fmt: skip
        preds.append(key)
    return nk.tl.evaluate(sdata, predictions=preds)


@pytest.fixture(scope="module")
def synthetic_scores():
    _features_available()
    k = 5
    sdata = nk.datasets.synthetic_tissue(8000, n_niches=k, random_state=0, artifacts=1.5, progress=False)
    nk.tl.teacher_niches(sdata, n_niches=k, progress=False)
    nk.pp.histology_features(sdata, backbone=BACKBONE, key_added="he_features")
    nk.pp.spatial_split(sdata, features_key="he_features")
    return _scores(sdata, k)


@pytest.mark.slow
def test_student_beats_the_baselines_on_synthetic_tissue(synthetic_scores):
    df = synthetic_scores
    best_baseline = df.drop(index="student_niche")["ari"].max()
    # measured (stain encoder, 8k cells, K=5, artifacts=1.5, MLP): seed 0 0.55 vs 0.29 (k-means on
    # neighbourhood features), 1.9x; seed 1 0.58 vs 0.19, 3.0x; seed 2 0.20 vs 0.18, 1.1x. Without artifacts
    # seed 0 gave 0.63 vs 0.53 (1.2x)
    assert df.loc["student_niche", "ari"] >= 1.1 * best_baseline, df
    assert df.loc["student_niche", "accuracy"] > 0.7, df


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="paper claim not reached on every seed with the stain encoder: with slide artifacts (artifacts=1.5) "
    "(8k cells, K=5, MLP) the student/best-baseline ARI ratio is 1.9x (seed 0), 3.0x (seed 1) and 1.1x "
    "(seed 2, the student falls to 0.20); stain-intensity variation (stain_variation > 0) hurts the student "
    "more than the baselines",
)
def test_student_doubles_the_best_baseline_on_synthetic_tissue(synthetic_scores):
    df = synthetic_scores
    assert df.loc["student_niche", "ari"] >= 2 * df.drop(index="student_niche")["ari"].max(), df


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(
    "test_libraries",
    # measured (stain encoder, per-section z-scores, K=5), student MLP vs best baseline ARI: MOB4 held out
    # 0.30 vs 0.21 (teacher's method on image features), animal 2 held out 0.27 vs 0.19; without per-section
    # z-scores the student only tied Leiden on animal 2 (0.14 vs 0.135)
    [["MOB4"], ["MOB3", "MOB4"]],
    ids=["MOB4", "animal2"],
)
def test_student_beats_every_baseline_on_held_out_mob_sections(test_libraries):
    _features_available()
    dataset_path("st_mob")
    k = 5
    sdata = nk.datasets.st_mob()
    # sections of two animals: the teacher must share one label space across them
    nk.tl.teacher_niches(sdata, n_niches=k, batch_correct=True, progress=False)
    # per-section z-scores remove the stain shift between sections/animals
    nk.pp.histology_features(sdata, backbone=BACKBONE, key_added="he_features", standardize="library")
    nk.pp.spatial_split(sdata, method="libraries", test_libraries=test_libraries)
    df = _scores(sdata, k)
    student = df.loc["student_niche"]
    baselines = df.drop(index="student_niche")
    assert (student["ari"] > baselines["ari"]).all(), df
