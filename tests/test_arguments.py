"""Bad arguments (issue 21): every numeric or choice keyword of every public ``pp`` / ``tl`` function is checked at
entry, with a ValueError or TypeError naming the argument, before anything is read or written.

One small synthetic section serves every case (module fixture): validation fails before any heavy work, so
each case takes milliseconds. Neighbour targets the data cannot give are refused before any neighbour list is
allocated.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nichekd as nk
from nichekd._core import validate as _val

# ---------------------------------------------------------------------------------------------------------------
# the object and its snapshot


@pytest.fixture(scope="module")
def sdata():
    """300 cells of synthetic tissue with its H&E image, plus stand-in teacher probabilities and features."""
    s = nk.datasets.synthetic_tissue(n_cells=300, random_state=0, progress=False)
    t = s.tables["table"]
    codes = pd.Categorical(t.obs["true_niche"]).codes
    k = int(codes.max()) + 1
    proba = np.full((t.n_obs, k), 0.1 / (k - 1), dtype=np.float32)
    proba[np.arange(t.n_obs), codes] = 0.9
    t.obsm["teacher_niche_proba"] = proba
    t.obs["teacher_niche"] = pd.Categorical([f"N{c}" for c in codes])
    t.obsm["feats"] = np.random.default_rng(0).normal(size=(t.n_obs, 8)).astype(np.float32)
    return s


def _table(obj) -> ad.AnnData:
    return obj if isinstance(obj, ad.AnnData) else obj.tables["table"]


def _canonical(uns) -> str:
    return json.dumps(uns, sort_keys=True, default=lambda v: repr(np.asarray(v).tolist()))


def snapshot(obj) -> dict:
    """What a function could change: element names, attrs, and the table's X, obs, obsm, obsp and uns."""
    out = {"table": _table(obj).copy()}
    if not isinstance(obj, ad.AnnData):
        out["elements"] = (sorted(obj.images), sorted(obj.shapes), sorted(obj.tables))
        out["attrs"] = _canonical(dict(obj.attrs))
    return out


def assert_unchanged(before: dict, obj) -> None:
    if "elements" in before:
        assert (sorted(obj.images), sorted(obj.shapes), sorted(obj.tables)) == before["elements"]
        assert _canonical(dict(obj.attrs)) == before["attrs"]
    a, b = before["table"], _table(obj)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert sorted(a.obsm) == sorted(b.obsm) and sorted(a.obsp) == sorted(b.obsp)
    for k in a.obsm:
        np.testing.assert_array_equal(np.asarray(a.obsm[k]), np.asarray(b.obsm[k]))
    assert _canonical(a.uns) == _canonical(b.uns)
    xa, xb = a.X, b.X
    np.testing.assert_array_equal(
        xa.toarray() if hasattr(xa, "toarray") else np.asarray(xa),
        xb.toarray() if hasattr(xb, "toarray") else np.asarray(xb),
    )


# ---------------------------------------------------------------------------------------------------------------
# every public function and each of its numeric and choice keywords

NAN, INF = float("nan"), float("inf")
HUGE = 10**12
BAD = {
    "int": ["3", 2.5, NAN, INF, -1, 0, True, None],
    "int0": ["3", 2.5, NAN, -1, True, None],  # zero allowed
    "int2": ["3", 2.5, NAN, 1, 0, -1, True, None],  # at least 2
    "positive": ["3", NAN, INF, -1, 0, True, None],
    "nonneg": ["3", NAN, INF, -1, True, None],
    "fraction": ["0.5", NAN, -0.1, 1.0, 2, True, None],  # [0, 1)
    "open_fraction": ["0.5", NAN, 0.0, 1.0, True, None],  # (0, 1)
    "seed": ["3", 2.5, 1.0, NAN, -1, 2**32, True, None],
    "choice": ["nope", 3, True],
}


def _bad(kind: str, *, optional: bool = False, huge: bool = False) -> list:
    values = [v for v in BAD[kind] if not (optional and v is None)]
    return values + ([HUGE] if huge else [])


# (function, required arguments, keyword, kind, options); options: optional (None allowed), huge (10**12 refused)
SPECS = [
    # ---- pp
    ("pp.spatial_split", {"buffer_um": 10.0}, "n_strips", "int2", {"huge": True}),
    ("pp.spatial_split", {"buffer_um": 10.0}, "test_strip", "int0", {"huge": True}),
    ("pp.spatial_split", {"buffer_um": 10.0}, "n_blocks", "int2", {"huge": True}),
    ("pp.spatial_split", {"buffer_um": 10.0}, "test_fraction", "open_fraction", {}),
    ("pp.spatial_split", {}, "buffer_um", "nonneg", {"optional": True}),
    ("pp.spatial_split", {"buffer_um": 10.0}, "random_state", "seed", {}),
    ("pp.spatial_split", {"buffer_um": 10.0}, "method", "choice", {}),
    ("pp.spatial_split", {"buffer_um": 10.0}, "teacher_guard", "choice", {}),
    ("pp.tissue_mask", {}, "level", "int0", {"optional": True}),
    ("pp.tissue_mask", {}, "target_mpp", "positive", {"huge": True}),
    ("pp.tissue_mask", {}, "min_area_um2", "nonneg", {}),
    ("pp.tissue_mask", {}, "closing_um", "nonneg", {"huge": True}),
    ("pp.tissue_mask", {}, "saturation_threshold", "open_fraction", {"optional": True}),
    ("pp.tissue_tiles", {}, "tile_size_um", "positive", {}),
    ("pp.tissue_tiles", {"tile_size_um": 50.0}, "grid", "choice", {}),
    ("pp.cell_types", {}, "resolution", "positive", {}),
    ("pp.cell_types", {}, "n_comps", "int", {}),
    ("pp.cell_types", {}, "n_neighbors", "int", {}),
    ("pp.cell_types", {}, "random_state", "seed", {}),
    ("pp.histology_features", {"backbone": "stain"}, "patch_size_um", "positive", {"optional": True}),
    ("pp.histology_features", {"backbone": "stain"}, "batch_size", "int", {}),
    ("pp.histology_features", {"backbone": "stain"}, "num_workers", "int0", {}),
    ("pp.histology_features", {"backbone": "stain"}, "input_size", "int", {"optional": True, "huge": True}),
    ("pp.histology_features", {"backbone": "stain"}, "mpp", "positive", {"optional": True}),
    ("pp.histology_features", {"backbone": "stain"}, "grid_um", "positive", {"optional": True}),
    ("pp.histology_features", {"backbone": "stain"}, "n_threads", "int", {"optional": True}),
    ("pp.histology_features", {"backbone": "stain"}, "stain_normalization", "choice", {}),
    ("pp.histology_features", {"backbone": "stain"}, "standardize", "choice", {}),
    ("pp.histology_features", {"backbone": "stain"}, "precision", "choice", {}),
    ("pp.augmented_features", {"features_key": "X_stain"}, "n_views", "int", {"huge": True}),
    ("pp.augmented_features", {"features_key": "X_stain"}, "hed_sigma", "nonneg", {}),
    ("pp.augmented_features", {"features_key": "X_stain"}, "scale_range", "nonneg", {"huge": True}),
    ("pp.augmented_features", {"features_key": "X_stain"}, "batch_size", "int", {}),
    ("pp.augmented_features", {"features_key": "X_stain"}, "num_workers", "int0", {}),
    ("pp.augmented_features", {"features_key": "X_stain"}, "random_state", "seed", {}),
    ("pp.histology_features_dask", {"backbone": "stain"}, "partition_size", "int", {}),
    ("pp.histology_features_dask", {"backbone": "stain"}, "standardize", "choice", {}),
    ("pp.histology_features_dask", {"backbone": "stain"}, "batch_size", "int", {}),
    ("pp.histology_features_dask", {"backbone": "stain"}, "patch_size_um", "positive", {"optional": True}),
    ("pp.histology_features_dask", {"backbone": "stain"}, "grid_um", "positive", {"optional": True}),
    ("pp.set_units", {}, "microns_per_unit", "positive", {}),
    ("pp.scvi_latent", {}, "n_latent", "int", {}),
    ("pp.scvi_latent", {}, "n_hidden", "int", {}),
    ("pp.scvi_latent", {}, "n_layers", "int", {}),
    ("pp.scvi_latent", {}, "max_epochs", "int", {}),
    ("pp.scvi_latent", {}, "batch_size", "int", {}),
    ("pp.scvi_latent", {}, "random_state", "seed", {}),
    ("pp.aggregate_bins", {}, "bin_size_um", "positive", {}),
    # ---- tl
    ("tl.teacher_niches", {}, "n_niches", "int2", {}),
    ("tl.teacher_niches", {"n_niches": 3}, "radius_um", "positive", {"optional": True}),
    ("tl.teacher_niches", {"n_niches": 3}, "n_neighbors_target", "positive", {}),
    ("tl.teacher_niches", {"n_niches": 3}, "n_rings", "int", {"huge": True}),
    ("tl.teacher_niches", {"n_niches": 3}, "n_comps", "int", {}),
    ("tl.teacher_niches", {"n_niches": 3}, "random_state", "seed", {}),
    ("tl.teacher_niches", {"n_niches": 3}, "method", "choice", {}),
    ("tl.teacher_niches", {"n_niches": 3}, "calibrate", "choice", {}),
    (
        "tl.teacher_niches",
        {"n_niches": None, "method": "labels", "labels_key": "true_niche"},
        "label_smoothing",
        "fraction",
        {},
    ),  # fmt: skip
    ("tl.distill", {"features_key": "feats"}, "random_state", "seed", {}),
    ("tl.predict_niches", {"model": "no_model_here"}, "batch_size", "int", {}),
    ("tl.predict_niches", {"model": "no_model_here"}, "tile_size_um", "positive", {"optional": True}),
    ("tl.predict_niches", {"model": "no_model_here"}, "grid", "choice", {}),
    ("tl.predict_niches_dask", {"model": "no_model_here"}, "batch_size", "int", {}),
    ("tl.predict_niches_dask", {"model": "no_model_here"}, "partition_size", "int", {}),
    ("tl.histology_baseline", {"method": "kmeans"}, "n_niches", "int2", {}),
    ("tl.histology_baseline", {"n_niches": 3}, "method", "choice", {}),
    ("tl.histology_baseline", {"n_niches": 3}, "radius_um", "positive", {"optional": True}),
    ("tl.histology_baseline", {"n_niches": 3}, "n_neighbors_target", "positive", {}),
    ("tl.histology_baseline", {"n_niches": 3}, "n_comps", "int", {}),
    ("tl.histology_baseline", {"n_niches": 3}, "n_components", "int", {"optional": True}),
    ("tl.histology_baseline", {"n_niches": 3}, "max_cells", "int2", {"optional": True}),
    ("tl.histology_baseline", {"n_niches": 3}, "teacher_method", "choice", {}),
    ("tl.histology_baseline", {"n_niches": 3}, "random_state", "seed", {}),
    ("tl.niche_k_sweep", {}, "n_seeds", "int", {"huge": True}),
    ("tl.niche_k_sweep", {}, "max_eval_cells", "int2", {}),
    ("tl.niche_k_sweep", {}, "radius_um", "positive", {"optional": True}),
    ("tl.niche_k_sweep", {}, "n_neighbors_target", "positive", {}),
    ("tl.niche_k_sweep", {}, "n_rings", "int", {"huge": True}),
    ("tl.niche_k_sweep", {}, "random_state", "seed", {}),
    ("tl.compare_compositions", {}, "n_permutations", "int0", {"huge": True}),
    ("tl.compare_compositions", {}, "random_state", "seed", {}),
    ("tl.compare_compositions", {}, "batch_size", "int", {}),
    ("tl.compare_compositions", {}, "null", "choice", {}),
    ("tl.compare_compositions", {}, "pairing", "choice", {}),
    ("tl.cross_validate", {}, "folds", "choice", {}),
    ("tl.cross_validate", {}, "n_blocks", "int2", {"huge": True}),
    ("tl.cross_validate", {}, "buffer_um", "nonneg", {"optional": True}),
    ("tl.cross_validate", {}, "architecture", "choice", {}),
    ("tl.cross_validate", {}, "random_state", "seed", {}),
    ("tl.annotation_probe", {"annotation_key": "true_niche", "keys": ["true_niche"]}, "groups", "choice", {}),
    (
        "tl.annotation_probe",
        {"annotation_key": "true_niche", "keys": ["true_niche"]},
        "n_blocks",
        "int2",
        {"huge": True},
    ),  # fmt: skip
    ("tl.annotation_probe", {"annotation_key": "true_niche", "keys": ["true_niche"]}, "kernel", "choice", {}),
    ("tl.annotation_probe", {"annotation_key": "true_niche", "keys": ["true_niche"]}, "C", "positive", {}),
    (
        "tl.annotation_probe",
        {"annotation_key": "true_niche", "keys": ["true_niche"]},
        "max_train",
        "int2",
        {},
    ),
    (
        "tl.annotation_probe",
        {"annotation_key": "true_niche", "keys": ["true_niche"]},
        "n_chance",
        "int",
        {"huge": True},
    ),  # fmt: skip
    (
        "tl.annotation_probe",
        {"annotation_key": "true_niche", "keys": ["true_niche"]},
        "random_state",
        "seed",
        {},
    ),  # fmt: skip
]

# the student's settings (nk.models.NicheStudent), given to distill as model={...}: (keyword, kind, options)
STUDENT_SPECS = [
    ("n_niches", "int2", {"optional": True}),
    ("radius_um", "positive", {"optional": True}),
    ("n_neighbors_target", "positive", {"optional": True}),
    ("max_neighbors", "int", {"optional": True, "huge": True}),
    ("temperature", "positive", {}),
    ("d_model", "int", {}),
    ("n_layers", "int", {}),
    ("n_heads", "int", {}),
    ("hidden", "int", {}),
    ("dropout", "fraction", {}),
    ("n_components", "int", {"optional": True}),
    ("n_members", "int", {"huge": True}),
    ("epochs", "int", {}),
    ("batch_size", "int", {}),
    ("epoch_cells", "int", {"optional": True}),
    ("lr", "positive", {}),
    ("weight_decay", "nonneg", {}),
    ("patience", "int", {}),
    ("min_epochs", "int0", {}),
    ("val_fraction", "fraction", {}),
    ("val_blocks", "int", {}),
    ("architecture", "choice", {}),
]

# public functions without a numeric or choice keyword (booleans and names only), and verdict (no sdata)
WITHOUT_NUMBERS = {
    "pp.list_backbones",
    "tl.evaluate",
    "tl.match_niches",
    "tl.niche_composition",
    "tl.verdict",
}


# numeric keywords that are sequences or need their own object, tested below
SEPARATELY_TESTED = {
    ("tl.niche_k_sweep", "k_values"),
    ("tl.verdict", "tie_margin"),
}


def _function(name: str):
    part, fn = name.split(".")
    return getattr(getattr(nk, part), fn)


def _cases():
    for fn, required, keyword, kind, options in SPECS:
        for value in _bad(kind, **options):
            yield pytest.param(fn, required, keyword, value, id=f"{fn}-{keyword}={value!r}")


def test_every_public_function_is_covered():
    """A new public function (or keyword) of pp/tl must be added here: its numbers are then checked."""

    public = {f"{part}.{n}" for part in ("pp", "tl") for n in dir(getattr(nk, part))
              if not n.startswith("_") and inspect.isfunction(getattr(getattr(nk, part), n))}  # fmt: skip
    covered = {spec[0] for spec in SPECS}
    assert public - covered - WITHOUT_NUMBERS == set()
    for fn, _, keyword, _, _ in SPECS:  # every keyword named here exists (or is forwarded by **kwargs)
        params = inspect.signature(_function(fn)).parameters
        forwarded = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert keyword in params or forwarded, (fn, keyword)
    # every keyword with a numeric default or annotation is checked here or in the tests below
    checked = {(spec[0], spec[2]) for spec in SPECS} | SEPARATELY_TESTED
    for fn in sorted(public):
        for p in inspect.signature(_function(fn)).parameters.values():
            ann, d = str(p.annotation), p.default
            numeric = (
                (isinstance(d, int | float) and not isinstance(d, bool)) or "int" in ann or "float" in ann
            )
            if numeric and "bool" not in ann:
                assert (fn, p.name) in checked, f"{fn}({p.name}=...) has no bad-value case in test_arguments"
    student = {spec[0] for spec in STUDENT_SPECS} | {"context_scales"}
    for p in inspect.signature(nk.models.NicheStudent).parameters.values():
        ann, d = str(p.annotation), p.default
        numeric = (isinstance(d, int | float) and not isinstance(d, bool)) or "int" in ann or "float" in ann
        if numeric and "bool" not in ann:
            assert p.name in student, f"NicheStudent({p.name}=...) has no bad-value case in test_arguments"


@pytest.mark.parametrize(("fn", "required", "keyword", "value"), list(_cases()))
def test_bad_value_is_refused_naming_the_argument(sdata, fn, required, keyword, value):
    before = snapshot(sdata)
    kwargs = {"progress": False} if "progress" in inspect.signature(_function(fn)).parameters else {}
    args = dict(required)
    model = args.pop("model", None)
    positional = (sdata,) if model is None else (sdata, model)
    with pytest.raises((ValueError, TypeError)) as err:
        _function(fn)(*positional, **{**args, **kwargs, keyword: value})
    message = str(err.value)
    # the message names the argument, the value given and what is allowed
    assert keyword in message and repr(value) in message and "must" in message, message
    assert_unchanged(before, sdata)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        pytest.param(kw, v, id=f"{kw}={v!r}")
        for kw, kind, options in STUDENT_SPECS
        for v in _bad(kind, **options)
    ],
)
def test_bad_student_setting_is_refused_by_distill(sdata, keyword, value):
    """The student's settings are checked when distill builds it, before the table is read."""
    before = snapshot(sdata)
    with pytest.raises((ValueError, TypeError)) as err:
        nk.tl.distill(sdata, features_key="feats", model={keyword: value}, progress=False)
    message = str(err.value)
    assert keyword in message and repr(value) in message and "must" in message, message
    assert_unchanged(before, sdata)


@pytest.mark.parametrize("value", ["24", (0.0,), (2, NAN), 4, ("a",), tuple(range(1, 20))])
def test_bad_context_scales_are_refused(sdata, value):
    before = snapshot(sdata)
    with pytest.raises((ValueError, TypeError), match="context_scales"):
        nk.tl.distill(sdata, features_key="feats", model={"context_scales": value}, progress=False)
    assert_unchanged(before, sdata)
    assert nk.models.NicheStudent(context_scales=[2, 4]).context_scales == (2.0, 4.0)


@pytest.mark.parametrize(
    ("fn", "required", "keyword", "value"),
    [
        ("tl.niche_k_sweep", {}, "k_values", [1, 3]),
        ("tl.niche_k_sweep", {}, "k_values", "35"),
        ("tl.niche_k_sweep", {}, "k_values", [3, 2.5]),
        ("tl.niche_k_sweep", {}, "k_values", []),
        ("tl.cross_validate", {}, "baselines", "leiden"),
        ("tl.cross_validate", {}, "baselines", ["dbscan"]),
        ("tl.cross_validate", {}, "distill_kwargs", {"epochs": 0}),
        ("tl.cross_validate", {}, "distill_kwargs", {"no_such_option": 1}),
    ],
)
def test_bad_sequence_or_mapping_is_refused(sdata, fn, required, keyword, value):
    before = snapshot(sdata)
    with pytest.raises((ValueError, TypeError)) as err:
        _function(fn)(sdata, **{**required, keyword: value, "progress": False})
    message = str(err.value)
    names = {"distill_kwargs": ("epochs", "distill_kwargs")}.get(keyword, (keyword,))
    assert any(n in message for n in names), message
    assert_unchanged(before, sdata)


def test_verdict_refuses_a_bad_margin():
    scores = pd.DataFrame({"ari": [0.6, 0.4]}, index=["student_niche", "he_leiden_niche"])
    for bad in ("0.1", -0.1, NAN, None):
        with pytest.raises((ValueError, TypeError), match="tie_margin"):
            nk.tl.verdict(scores, tie_margin=bad)


@pytest.mark.parametrize("seed", [0, 7, np.int64(3), np.uint32(5), 2**32 - 1])
def test_seeds_accept_python_and_numpy_integers(seed):
    assert _val.check_seed("random_state", seed) == int(seed)


# ---------------------------------------------------------------------------------------------------------------
# neighbour targets the data cannot give: refused before any neighbour list is allocated


@pytest.mark.parametrize("target", [300, 10**6, HUGE])
def test_teacher_refuses_a_neighbour_target_above_the_cells(sdata, target):
    before = snapshot(sdata)
    with pytest.raises(
        ValueError, match=r"n_neighbors_target.*smallest section, 'synthetic', has 300"
    ) as err:
        nk.tl.teacher_niches(sdata, n_niches=3, n_neighbors_target=target, key_added="t_new", progress=False)
    assert "Lower n_neighbors_target" in str(err.value)
    assert_unchanged(before, sdata)


def test_k_sweep_and_baseline_refuse_a_neighbour_target_above_the_cells(sdata):
    before = snapshot(sdata)
    with pytest.raises(ValueError, match="n_neighbors_target.*has 300"):
        nk.tl.niche_k_sweep(sdata, k_values=[2, 3], n_neighbors_target=HUGE, progress=False)
    with pytest.raises(ValueError, match="n_neighbors_target.*training cells"):
        nk.tl.histology_baseline(sdata, method="kmeans", n_niches=3, features_key="feats", neighbourhood=True,
                                 n_neighbors_target=HUGE, split_key=None)  # fmt: skip
    assert_unchanged(before, sdata)


def test_distill_refuses_a_neighbour_target_above_the_training_cells(sdata):
    before = snapshot(sdata)
    with pytest.raises(ValueError, match=r"n_neighbors_target.*has 300 training cells, so at most 299"):
        nk.tl.distill(
            sdata, features_key="feats", split_key=None, model={"n_neighbors_target": HUGE}, progress=False
        )
    assert_unchanged(before, sdata)


def test_neighbour_target_rule():
    _val.check_neighbour_target(9, {"a": 10, "b": 500})
    with pytest.raises(ValueError, match=r"smallest section, 'a', has 10 observations, so at most 9"):
        _val.check_neighbour_target(10, {"a": 10, "b": 500})


# ---------------------------------------------------------------------------------------------------------------
# property-based: the validators and a public function, on any value


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.integers(0, 3), max_size=2),
)


@given(ANY_VALUE)
def test_int_validator_contract(value):
    try:
        out = _val.check_int("n", value, minimum=1, maximum=100)
    except (ValueError, TypeError) as err:
        assert str(err).startswith("n must be")
    else:
        assert isinstance(out, int) and 1 <= out <= 100 and out == value and not isinstance(value, bool)


@given(ANY_VALUE)
def test_seed_validator_contract(value):
    try:
        out = _val.check_seed("random_state", value)
    except (ValueError, TypeError) as err:
        assert "random_state must be an integer seed" in str(err)
    else:
        assert isinstance(value, int) and not isinstance(value, bool) and out == value and 0 <= out < 2**32


@given(ANY_VALUE)
def test_positive_validator_contract(value):
    try:
        out = _val.check_positive("radius_um", value, unit="microns")
    except (ValueError, TypeError) as err:
        assert "radius_um must be" in str(err)
    else:
        assert math.isfinite(out) and out > 0 and not isinstance(value, bool)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(ANY_VALUE, st.integers(2, 8)))
def test_split_never_changes_the_object_and_names_its_argument(sdata, value):
    """``spatial_split(copy=True)`` with any ``n_strips``: a result, or an error naming ``n_strips``; the
    user's object is never changed."""
    before = snapshot(sdata)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # small parts of a small section
            out = nk.pp.spatial_split(sdata, n_strips=value, test_strip=0, buffer_um=5.0, copy=True)
    except (ValueError, TypeError) as err:
        assert "n_strips" in str(err) or "no test" in str(err) or "no train" in str(err)
    else:
        assert set(out.obs["split"].astype(str)) <= {"train", "test", "buffer"}
    assert_unchanged(before, sdata)
