"""Hostile-input review (round 21): stale results after a redone split, diverging students, unusable key names,
key arguments of the wrong type, bad devices, extreme but finite sizes, split labels nichekd does not use, and
a default split that leaves no test cells. Every refusal leaves the object unchanged.

The slide fixtures come from ``test_predict`` (colour features standing in for ``histology_features``), so the
student cases run in seconds.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from test_hostile import _assert_nothing_changed, _everything

import nichekd as nk
from nichekd._core.neighbors import radius_neighbours
from nichekd._core.runtime import check_device
from nichekd._core.validate import invalid_name
from nichekd.models import NicheStudent
from nichekd.tl import distill

# ---------------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def tissue():
    """400 synthetic cells with counts, no image."""
    return nk.datasets.synthetic_tissue(n_cells=400, n_niches=3, random_state=0, image=False, progress=False)


def _distill(sdata, **kwargs):
    model = kwargs.pop("model", NicheStudent(architecture="mlp", epochs=2))
    return distill(sdata, model=model, features_key="he_features", progress=False, **kwargs)


def _caught(call, text: str) -> list[str]:
    """The messages of the warnings ``call()`` raises that contain ``text``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if text in str(w.message)]


def _refused(sdata, call, error, match: str) -> str:
    """``call()`` raises ``error`` matching ``match`` and leaves ``sdata`` exactly as it was."""
    before = _everything(sdata)
    with pytest.raises(error, match=match) as err:
        call()
    _assert_nothing_changed(before, sdata)
    return str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# 1. a split redone after the fit: evaluate warns that held-out cells may be training cells


def test_evaluate_warns_when_the_split_was_redone_after_the_fit(slide):
    t = slide.tables["table"]
    model = _distill(slide)
    nk.tl.histology_baseline(slide, method="kmeans", n_niches=2, key_added="he_km")
    nk.tl.predict_niches(slide, model, key_added="pn")
    for key in ("student_niche", "he_km"):
        params = t.uns[key]["params"]
        assert params["split_key"] == "split" and {"split_fingerprint", "split_cells"} <= set(params)
    predictions = ["student_niche", "he_km", "pn"]

    def evaluate(obj=slide):
        return nk.tl.evaluate(obj, predictions=predictions)

    assert not _caught(evaluate, "another split")
    trained_with = t.obs["split"].copy()
    nk.pp.spatial_split(slide, test_strip=2)  # allowed: spatial_split re-runs its own key
    found = _caught(evaluate, "another split")
    assert len(found) == 3, found
    by_key = {k: next(m for m in found if f"obs[{k!r}]" in m) for k in predictions}
    assert "nk.tl.distill(sdata, key_added='student_niche', ...)" in by_key["student_niche"]
    assert "nk.tl.histology_baseline(sdata, key_added='he_km', ...)" in by_key["he_km"]
    assert "nk.tl.predict_niches(sdata, model, key_added='pn')" in by_key["pn"]
    assert all("evaluate with the split it was trained on" in m for m in found)
    # other cells (a subset) are another object, not a redone split
    part = t[:450].copy()
    assert not _caught(lambda: evaluate(part), "another split")
    # the split it was trained on: no warning; the fix (a re-run on this split) too
    t.obs["split"] = trained_with
    assert not _caught(evaluate, "another split")
    nk.pp.spatial_split(slide, test_strip=2)
    _distill(slide)
    found = _caught(evaluate, "another split")
    assert len(found) == 2 and not any("'student_niche'" in m for m in found)


def test_a_prediction_fitted_without_a_split_record_is_not_warned_about(slide):
    """Records older than the fingerprint (and predictions of a loaded model) say nothing: no warning."""
    t = slide.tables["table"]
    _distill(slide)
    for k in ("split_fingerprint", "split_cells"):
        del t.uns["student_niche"]["params"][k]
    nk.pp.spatial_split(slide, test_strip=2)
    assert not _caught(lambda: nk.tl.evaluate(slide), "another split")


# ---------------------------------------------------------------------------------------------------------------
# 2. a diverging student stops with an error naming lr and temperature; nothing is written


def test_learning_rate_and_temperature_have_upper_bounds():
    with pytest.raises(ValueError, match=r"lr must be a positive number of at most 10, got 1000000000000.0"):
        NicheStudent(lr=1e12)
    with pytest.raises(ValueError, match=r"temperature must be a positive number of at most 1000"):
        NicheStudent(temperature=1e6)
    NicheStudent(lr=10.0, temperature=1000.0)  # the bounds themselves are allowed


def test_a_diverging_student_stops_and_writes_nothing(slide, monkeypatch):
    import nichekd.models.student as student

    monkeypatch.setattr(student, "MAX_LR", 1e13)  # past the bound: a step size that diverges at once
    diverging = NicheStudent(architecture="mlp", epochs=3, lr=1e12)
    message = _refused(
        slide, lambda: _distill(slide, model=diverging, teacher_key="teacher_niche"), ValueError, "diverged"
    )
    assert "lr=1e+12" in message and "temperature=2" in message and "Lower lr=" in message
    # fitted directly: no half-fitted model is left behind
    rng = np.random.default_rng(0)
    xy, feats = rng.uniform(0, 500, (300, 2)), rng.normal(size=(300, 8)).astype(np.float32)
    model = NicheStudent(3, radius_um=60.0, architecture="mlp", epochs=2, lr=1e12)
    with pytest.raises(ValueError, match="diverged"):
        model.fit(feats, rng.normal(size=(300, 3)), xy, progress=False)
    assert not model.is_fitted


# ---------------------------------------------------------------------------------------------------------------
# 3. keys spatialdata cannot write are refused before anything is written

BAD_KEYS = [5, "", "a/b", "a b", "__hidden", "..", "x:y"]
WRITERS = {
    "spatial_split": lambda s, k: nk.pp.spatial_split(s, key_added=k, buffer_um=10.0),
    "teacher_niches": lambda s, k: nk.tl.teacher_niches(
        s, n_niches=None, method="labels", labels_key="teacher_niche", key_added=k, progress=False
    ),
    "distill": lambda s, k: _distill(s, key_added=k),
    "histology_baseline": lambda s, k: nk.tl.histology_baseline(s, method="kmeans", n_niches=2, key_added=k),
    "histology_features": lambda s, k: nk.pp.histology_features(
        s, backbone="precomputed", features_key="he_features", key_added=k
    ),
}


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_unusable_key_added_is_refused(slide, writer, key):
    if writer == "histology_baseline" and key == "":
        pytest.skip("histology_baseline takes an empty key_added for its default name")
    error = TypeError if not isinstance(key, str) else ValueError
    message = _refused(slide, lambda: WRITERS[writer](slide, key), error, "key_added")
    assert "letters, digits, '_', '-' and '.'" in message and "Nothing was written" in message


def test_a_case_variant_of_an_existing_key_is_refused(slide):
    nk.tl.teacher_niches(slide, n_niches=None, method="labels", labels_key="teacher_niche", progress=False,
                         key_added="niches")  # fmt: skip
    message = _refused(
        slide, lambda: WRITERS["teacher_niches"](slide, "Niches"), ValueError, "differs from it only in case"
    )
    assert "obs['niches']" in message


@pytest.mark.parametrize(
    "name", ["ok", "a.b-c_1", "Ünïcode", "", ".", "..", "__x", "_x", "a/b", "a b", "x:y", "tab\t", 5, None]
)
def test_the_name_rule_is_spatialdatas(name):
    from spatialdata._core.validation import check_valid_dataframe_column_name, check_valid_name

    for column, check in ((False, check_valid_name), (True, check_valid_dataframe_column_name)):
        try:
            check(name)
            valid = True
        except (TypeError, ValueError):
            valid = False
        assert (invalid_name(name, column=column) is None) == valid, (name, column)
    assert invalid_name("_index", column=True) is not None and invalid_name("_index") is None


def test_a_valid_unusual_key_is_written_and_stored(slide, tmp_path):
    nk.pp.spatial_split(slide, key_added="my.split-1", buffer_um=10.0)
    nk.io.write(slide, tmp_path / "store.zarr")
    assert (tmp_path / "store.zarr").exists()


# ---------------------------------------------------------------------------------------------------------------
# 4. key arguments of the wrong type name the argument


@pytest.mark.parametrize(
    ("argument", "call"),
    [
        ("table_key", lambda s: nk.tl.teacher_niches(s, n_niches=2, table_key=["table"], progress=False)),
        ("library_key", lambda s: nk.pp.spatial_split(s, library_key=["library"], overwrite=True)),
        ("library_key", lambda s: _distill(s, library_key=["library"], key_added="q")),
        ("features_key", lambda s: distill(s, features_key=3, progress=False, key_added="q")),
        ("teacher_key", lambda s: _distill(s, teacher_key=["teacher_niche"], key_added="q")),
        ("split_key", lambda s: _distill(s, split_key=["split"], key_added="q")),
        ("teacher_key", lambda s: nk.pp.spatial_split(s, teacher_key=["t"], buffer_um=10.0)),
        ("predictions", lambda s: nk.tl.evaluate(s, predictions=[3])),
        ("split_key", lambda s: nk.tl.evaluate(s, predictions=["teacher_niche"], split_key=["split"])),
        ("split", lambda s: nk.tl.evaluate(s, predictions=["teacher_niche"], split=["test"])),
        ("features_key", lambda s: nk.pp.histology_features(s, backbone="precomputed", features_key=["f"])),
        ("library", lambda s: nk.tl.predict_niches(s, "no_model_here", library=["S1"])),
    ],
)
def test_key_arguments_of_the_wrong_type_name_the_argument(slide, argument, call):
    message = _refused(slide, lambda: call(slide), TypeError, re.escape(argument))
    assert "unhashable" not in message and "must be" in message


# ---------------------------------------------------------------------------------------------------------------
# 5. one device rule for every function taking device=


@pytest.mark.parametrize(
    "call",
    [
        lambda s, d: nk.pp.histology_features(
            s, backbone="precomputed", features_key="he_features", device=d
        ),
        lambda s, d: _distill(s, device=d, key_added="q"),
        lambda s, d: nk.tl.predict_niches(s, "no_model_here", device=d),
    ],
    ids=["histology_features", "distill", "predict_niches"],
)
@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:x", "CPU", 3])
def test_a_bad_device_is_refused_everywhere(slide, call, device):
    error = TypeError if not isinstance(device, str) else ValueError
    message = _refused(slide, lambda: call(slide, device), error, "device must be one of")
    assert repr(device) in message


def test_the_device_rule():
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps", "cpu:0"):
        assert check_device(ok) == ok
    for bad in ("tpu", "auto:0", "cuda:", "gpu", ""):
        with pytest.raises(ValueError, match="device must be one of"):
            check_device(bad)
    with pytest.raises(RuntimeError, match="device='cuda:99'"):  # exists on this machine? resolve_device says
        from nichekd._core.runtime import resolve_device

        resolve_device("cuda:99")


# ---------------------------------------------------------------------------------------------------------------
# 6. sizes larger than the section


def test_a_grid_larger_than_the_section_is_refused(slide):
    message = _refused(
        slide,
        lambda: nk.pp.histology_features(slide, backbone="stain", grid_um=1e12, key_added="grid"),
        ValueError,
        r"grid_um=1e\+12 is larger than the extent of every section",
    )
    assert re.search(r"'S1': [\d.]+ x [\d.]+ um", message)


def test_a_radius_larger_than_the_section_is_warned_about(tissue):
    found = _caught(
        lambda: nk.tl.teacher_niches(tissue, n_niches=3, model={"radius_um": 1e12}, progress=False),
        "exceeds the extent",
    )
    assert found and "radius 1e+12 um" in found[0] and re.search(r"diagonal [\d.]+ um", found[0])
    assert not _caught(lambda: nk.tl.teacher_niches(tissue, n_niches=3, progress=False, overwrite=True),
                       "exceeds the extent")  # fmt: skip


def test_radius_neighbours_warns_only_past_every_groups_extent():
    xy = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2) * 10  # 90 x 90 um
    groups = np.where(xy[:, 0] < 45, "a", "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        radius_neighbours(xy, 60.0, groups=groups)  # beyond a half's width (40 um), within its diagonal
        radius_neighbours(xy, 15.0, groups=groups)
    with pytest.warns(UserWarning, match=r"radius 1000 um exceeds the extent of every section"):
        radius_neighbours(xy, 1000.0, groups=groups)


# ---------------------------------------------------------------------------------------------------------------
# 7. split labels nichekd does not use: the values found, and nk.pp.spatial_split


@pytest.mark.parametrize("labels", [["Train", "Test"], [True, False]], ids=["capitalised", "booleans"])
def test_distill_lists_the_split_values_it_found(slide, labels):
    t = slide.tables["table"]
    t.obs["split"] = np.random.default_rng(0).choice(np.array(labels, dtype=object), t.n_obs)
    if isinstance(labels[0], str):
        t.obs["split"] = pd.Categorical(t.obs["split"])
    message = _refused(
        slide, lambda: _distill(slide, teacher_key="teacher_niche"), ValueError, r"obs\['split'\] == 'train'"
    )
    for value in labels:
        assert repr(str(value)) in message
    assert "nk.pp.spatial_split" in message and "Only 0" not in message


def test_evaluate_lists_the_split_values_it_found(slide):
    message = _refused(
        slide,
        lambda: nk.tl.evaluate(slide, predictions=["teacher_niche"], split="Test"),
        ValueError,
        r"obs\['split'\] == 'Test'",
    )
    assert "'test'" in message and "'train'" in message and "split=" in message
    assert "nk.pp.spatial_split" in message


# ---------------------------------------------------------------------------------------------------------------
# 8. a default split that leaves no test cells names values that would


def test_a_split_without_test_cells_suggests_values_that_work():
    sdata = nk.datasets.synthetic_tissue(n_cells=400, random_state=0, progress=False)
    nk.pp.histology_features(sdata, backbone="stain")
    t = sdata.tables["table"]
    message = _refused(sdata, lambda: nk.pp.spatial_split(sdata), ValueError, "leaves no test cells")
    found = re.search(
        r"Try buffer_um=([\d.]+) \(the largest that keeps test cells; ([\d.]+) keeps 50", message
    )
    strips = re.search(r"n_strips=(\d+), test_strip=(\d+)", message)
    assert found and strips, message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few test cells: warned about, as it should be
        nk.pp.spatial_split(sdata, buffer_um=float(found.group(1)))
        assert (t.obs["split"] == "test").any()
        nk.pp.spatial_split(sdata, buffer_um=float(found.group(2)))
        assert (t.obs["split"] == "test").sum() >= 50
        nk.pp.spatial_split(sdata, n_strips=int(strips.group(1)), test_strip=int(strips.group(2)))
        assert (t.obs["split"] == "test").any()


def test_predictions_of_a_model_are_checked_against_the_teacher_it_learned_from(tmp_path):
    """predict_niches records the teacher the model learned from (saved with the model): evaluate warns when
    the teacher on the object was refitted since, and not when the same fitted teacher relabels the cells."""
    sdata = nk.datasets.synthetic_tissue(n_cells=900, n_niches=3, random_state=0, progress=False)
    nk.pp.histology_features(sdata, backbone="stain", key_added="he_features")
    nk.pp.spatial_split(sdata)
    teacher = nk.models.NicheTeacher(3, split_key="split", progress=False).fit(sdata["table"])
    nk.tl.teacher_niches(sdata, model=teacher, progress=False)
    model = NicheStudent.load(_distill(sdata).save(tmp_path / "m"))  # the record survives save/load
    nk.tl.predict_niches(sdata, model, key_added="pn")

    def stale():
        return _caught(lambda: nk.tl.evaluate(sdata, predictions=["student_niche", "pn"]), "another run")

    assert stale() == []
    nk.tl.teacher_niches(sdata, model=teacher, progress=False)  # the same fitted teacher, a new run
    assert stale() == []
    nk.tl.teacher_niches(sdata, n_niches=4, progress=False)  # refitted, another K
    messages = stale()
    assert len(messages) == 2 and any("obs['pn']" in m for m in messages)
