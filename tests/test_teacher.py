"""Teacher niches: recovery of known niches, outputs, determinism, persistence and bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

import nichekd as nk
from nichekd.models import NicheTeacher


def multi_library_tissue(n_per_lib=600, n_libs=2, n_niches=4, n_types=6, n_genes=80, seed=0, shift=0.0):
    """Small tissue: Voronoi patches of niches, each niche a mixture of cell types, Poisson counts.

    ``shift`` adds a per-library offset to the expression profiles (a batch effect).
    """
    rng = np.random.default_rng(seed)
    mix = rng.dirichlet(np.full(n_types, 0.3), size=n_niches)
    prof = rng.lognormal(0, 1.2, size=(n_types, n_genes))
    xy, libs, niche, types, batch = [], [], [], [], []
    for lib in range(n_libs):
        pts = rng.uniform(0, 800, size=(n_per_lib, 2))
        seeds = rng.uniform(0, 800, size=(3 * n_niches, 2))
        lab = np.tile(np.arange(n_niches), 3)[((pts[:, None] - seeds[None]) ** 2).sum(-1).argmin(1)]
        xy.append(pts)
        niche.append(lab)
        types.append(np.array([rng.choice(n_types, p=mix[k]) for k in lab]))
        libs += [f"s{lib}"] * n_per_lib
        batch.append(np.full(n_per_lib, lib))
    t, b = np.concatenate(types), np.concatenate(batch)
    rates = prof[t] * np.exp(shift * rng.normal(size=(n_libs, n_genes)))[b]
    rates /= rates.sum(1, keepdims=True)
    counts = rng.poisson(rates * rng.lognormal(np.log(200), 0.3, size=(len(t), 1))).astype(np.float32)
    adata = ad.AnnData(sparse.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs["library"] = pd.Categorical(libs)
    adata.obs["true_niche"] = pd.Categorical(np.concatenate(niche).astype(str))
    adata.obs["cell_type"] = pd.Categorical([f"T{i}" for i in t])
    adata.obsm["spatial"] = np.concatenate(xy)
    nk.pp.set_units(adata, microns_per_unit=1.0)  # coordinates in microns
    return adata


@pytest.fixture(scope="module")
def tissue():
    """One synthetic section with known niches (nk.datasets.synthetic_tissue), table only."""
    sdata = nk.datasets.synthetic_tissue(
        n_cells=3000, n_niches=5, image=False, random_state=0, progress=False
    )
    return sdata["table"]


@pytest.fixture()
def small():
    return multi_library_tissue()


def ari(a, b) -> float:
    return adjusted_rand_score(np.asarray(a), np.asarray(b))


def test_aggregate_recovers_true_niches_beyond_expression_only(tissue):
    adata = tissue.copy()
    nk.tl.teacher_niches(adata, n_niches=5, progress=False)
    score = ari(adata.obs["true_niche"], adata.obs["teacher_niche"])
    # the same latent clustered without neighbourhoods finds cell types, not niches
    teacher = NicheTeacher(5)
    latent = teacher.prepare(adata, fit=True).latent
    expr_only = ari(adata.obs["true_niche"], GaussianMixture(5, random_state=0).fit_predict(latent))
    assert score > 0.8  # measured 0.92 (4000 cells) / 0.9 (3000); chance is 0
    assert score > expr_only + 0.4  # expression alone measured ~0.2


def test_outputs_layout_and_naming(tissue):
    adata = tissue.copy()
    nk.tl.teacher_niches(adata, n_niches=5, key_added="tn", progress=False)
    proba, logits = adata.obsm["tn_proba"], adata.obsm["tn_logits"]
    assert proba.shape == (adata.n_obs, 5) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert logits.shape == (adata.n_obs, 5)
    np.testing.assert_allclose(np.exp(logits).sum(1), 1.0, atol=1e-4)  # log posteriors
    labels = adata.obs["tn"]
    assert list(labels.cat.categories) == [f"N{i}" for i in range(5)]
    assert (labels.cat.codes.to_numpy() == proba.argmax(1)).all()
    # names are ordered by decreasing mixture weight, so N0 is (about) the largest niche
    counts = labels.value_counts().reindex(labels.cat.categories).to_numpy()
    assert counts[0] == counts.max()
    params = adata.uns["tn"]["params"]
    assert params["method"] == "aggregate" and params["n_niches"] == 5
    assert params["radius_um"] > 0 and params["n_neighbors_target"] == 10 and "versions" in params
    assert list(adata.uns["tn"]["niche_names"]) == [f"N{i}" for i in range(5)]
    # the estimated radius gives about the target number of neighbours
    assert 6 <= params["mean_neighbours"] <= 14


def test_same_seed_same_labels_and_copy(tissue):
    a = tissue.copy()
    out = nk.tl.teacher_niches(a, n_niches=4, copy=True, progress=False)
    assert "teacher_niche" not in a.obs and "teacher_niche_proba" not in a.obsm
    again = nk.tl.teacher_niches(a, n_niches=4, copy=True, progress=False)
    assert (out.obs["teacher_niche"] == again.obs["teacher_niche"]).all()
    np.testing.assert_array_equal(out.obsm["teacher_niche_proba"], again.obsm["teacher_niche_proba"])


def test_spatialdata_input_and_return_model():
    sdata = nk.datasets.synthetic_tissue(
        n_cells=1500, n_niches=3, image=False, random_state=1, progress=False
    )
    teacher = nk.tl.teacher_niches(sdata, n_niches=3, return_model=True, progress=False)
    assert isinstance(teacher, NicheTeacher)
    table = sdata["table"]
    assert "teacher_niche" in table.obs
    np.testing.assert_allclose(teacher.predict_proba(table), table.obsm["teacher_niche_proba"], atol=1e-5)


@pytest.mark.parametrize("method", ["aggregate", "composition", "transformer", "labels"])
def test_save_load_roundtrip_without_pickle(small, tmp_path, method):
    kw = {
        "composition": {"cell_type_key": "cell_type"},
        "transformer": {"transformer_kwargs": {"n_steps": 20}},
        "labels": {"labels_key": "true_niche", "label_smoothing": 0.1},
    }.get(method, {})
    k = None if method == "labels" else 3
    teacher = NicheTeacher(k, method=method, progress=False, **kw).fit(small)
    path = teacher.save(tmp_path / "t")
    assert sorted(p.suffix for p in path.iterdir()) <= [".json", ".safetensors", ".safetensors"]
    loaded = NicheTeacher.load(path)
    np.testing.assert_allclose(loaded.predict_proba(small), teacher.predict_proba(small), atol=1e-5)
    assert list(loaded.predict(small)) == list(teacher.predict(small))


def test_a_gpu_trained_teacher_loads_on_a_cpu(small, tmp_path):
    """The device a teacher ran on is not saved: a teacher trained on a GPU predicts here after load (it used to
    load with device="cuda" and fail)."""
    teacher = NicheTeacher(3, method="transformer", transformer_kwargs={"n_steps": 20}, progress=False).fit(
        small
    )
    teacher.device = "cuda"  # as if fitted on a GPU machine
    loaded = NicheTeacher.load(teacher.save(tmp_path / "t"))
    assert loaded.device == "auto"
    teacher.device = "cpu"
    np.testing.assert_allclose(loaded.predict_proba(small), teacher.predict_proba(small), atol=1e-5)


def test_predict_on_new_data_needs_same_genes(small):
    teacher = NicheTeacher(3, progress=False).fit(small)
    other = multi_library_tissue(seed=0)  # same generator: same genes, new cells are the same cells here
    np.testing.assert_allclose(teacher.predict_proba(other), teacher.predict_proba(small), atol=1e-5)
    shuffled = small[:, ::-1].copy()  # gene order does not matter, names do
    np.testing.assert_allclose(teacher.predict_proba(shuffled), teacher.predict_proba(small), atol=1e-4)
    with pytest.raises(KeyError, match="genes used by the teacher are missing"):
        teacher.predict_proba(small[:, :10].copy())


def test_transformer_learns_niches(tissue):
    adata = tissue.copy()
    nk.tl.teacher_niches(
        adata, n_niches=5, method="transformer", transformer_kwargs={"n_steps": 200}, progress=False
    )
    proba = adata.obsm["teacher_niche_proba"]
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert "teacher_niche_logits" in adata.obsm
    # measured 0.61 with 300 steps on 4000 cells; expression-only clustering ~0.2
    assert ari(adata.obs["true_niche"], adata.obs["teacher_niche"]) > 0.4


def test_composition_and_labels_methods(small):
    a = small.copy()
    nk.tl.teacher_niches(a, n_niches=4, method="composition", cell_type_key="cell_type", progress=False)
    assert ari(a.obs["true_niche"], a.obs["teacher_niche"]) > 0.3  # measured ~0.5; chance 0
    # per-spot fractions in obsm work like obs cell types
    onehot = pd.get_dummies(a.obs["cell_type"]).astype(float)
    onehot.index = a.obs_names
    a.obsm["cell_type_fractions"] = onehot
    b = nk.tl.teacher_niches(
        a, n_niches=4, method="composition", cell_type_key="cell_type_fractions", copy=True, progress=False
    )
    assert (b.obs["teacher_niche"] == a.obs["teacher_niche"]).all()
    nk.tl.teacher_niches(
        a, n_niches=None, method="labels", labels_key="true_niche", label_smoothing=0.2, key_added="lab"
    )
    p = a.obsm["lab_proba"]
    assert "lab_logits" not in a.obsm
    np.testing.assert_allclose(p.max(1), 0.8, atol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    mapping = a.uns["lab"]["label_names"]
    assert [mapping[n] for n in a.obs["lab"]] == list(a.obs["true_niche"].astype(str))


def test_use_rep_skips_normalisation(small):
    a = small.copy()
    a.obsm["features"] = np.random.default_rng(0).normal(size=(a.n_obs, 8)).astype(np.float32)
    a.X = a.X * -1.0  # would fail the count checks: use_rep must not touch X
    nk.tl.teacher_niches(a, n_niches=3, use_rep="features", progress=False)
    assert a.obsm["teacher_niche_proba"].shape == (a.n_obs, 3)


def test_joint_fit_and_batch_correction():
    a = multi_library_tissue(shift=1.0, seed=3)
    plain = nk.tl.teacher_niches(a, n_niches=4, copy=True, progress=False)
    corrected = nk.tl.teacher_niches(a, n_niches=4, batch_correct=True, copy=True, progress=False)
    assert corrected.uns["teacher_niche"]["params"]["batch_correct"] is True

    def per_library(x):
        return np.mean(
            [
                ari(x.obs["true_niche"][m], x.obs["teacher_niche"][m])
                for m in [x.obs["library"] == lib for lib in ("s0", "s1")]
            ]
        )

    # with a strong batch effect the plain fit splits niches by section; per-library scaling undoes it
    assert per_library(corrected) > per_library(plain) + 0.1
    assert ari(corrected.obs["true_niche"], corrected.obs["teacher_niche"]) > 0.4
    lib_of_niche = pd.crosstab(corrected.obs["teacher_niche"], corrected.obs["library"])
    assert (lib_of_niche > 0).all().all()  # one label space: every niche in every section


def test_neighbourhoods_never_cross_libraries(small):
    a = small.copy()
    a.obsm["spatial"][a.obs["library"] == "s1"] = a.obsm["spatial"][a.obs["library"] == "s0"]  # overlay
    teacher = NicheTeacher(3, progress=False)
    inputs = teacher.prepare(a, fit=True)
    lib = a.obs["library"].cat.codes.to_numpy()
    idx = inputs.nbrs.index
    assert (lib[np.where(idx >= 0, idx, np.arange(len(idx))[:, None])] == lib[:, None]).all()


# ------------------------------------------------------------------------------------------ bad input
def _assert_untouched(before: ad.AnnData, after: ad.AnnData):
    assert list(after.obs.columns) == list(before.obs.columns)
    assert list(after.obsm.keys()) == list(before.obsm.keys())
    assert set(after.uns.keys()) == set(before.uns.keys())


@pytest.mark.parametrize(
    ("mutate", "kwargs", "exc", "match"),
    [
        (None, {"n_niches": 5000}, ValueError, "larger than the number of cells"),
        (None, {"n_niches": 1}, ValueError, "integer >= 2"),
        (None, {"method": "kmeans"}, ValueError, "method must be one of"),
        (None, {"use_rep": "X_scvi"}, KeyError, "use_rep='X_scvi' is not in obsm"),
        (None, {"method": "composition"}, ValueError, "nichekd.pp.cell_types"),
        (None, {"method": "composition", "cell_type_key": "nope"}, KeyError, "neither an obs column"),
        (None, {"method": "labels"}, ValueError, "labels_key"),
        (None, {"radius_um": -5.0}, ValueError, "radius_um must be a positive"),
        (None, {"radius_um": 0.01}, ValueError, "Coordinates must be microns"),
        (lambda a: a.obsm.pop("spatial"), {}, KeyError, "No coordinates"),
        (lambda a: a.X.data.__setitem__(0, np.nan), {}, ValueError, "NaN"),
        (lambda a: a.X.data.__setitem__(0, -3.0), {}, ValueError, "negative values"),
        (lambda a: a.obsm["spatial"].__setitem__((0, 0), np.nan), {}, ValueError, "NaN or infinite"),
    ],
)
def test_bad_input_raises_and_leaves_data_untouched(small, mutate, kwargs, exc, match):
    if mutate is not None:
        mutate(small)
    before = small.copy()
    kw = {"n_niches": 3, **kwargs}
    with pytest.raises(exc, match=match):
        nk.tl.teacher_niches(small, n_niches=kw.pop("n_niches"), progress=False, **kw)
    _assert_untouched(before, small)


def test_small_library_and_k_per_library(small):
    a = small[np.r_[0:600, 600:605]].copy()  # library s1 keeps 5 cells
    with pytest.raises(ValueError, match="fewer than 10 cells"):
        nk.tl.teacher_niches(a, n_niches=3, progress=False)
    b = small[np.r_[0:600, 600:615]].copy()  # s1 has 15 cells: K=20 exceeds it
    with pytest.raises(ValueError, match="larger than library 's1' allows"):
        nk.tl.teacher_niches(b, n_niches=20, progress=False)
    assert "teacher_niche" not in a.obs and "teacher_niche" not in b.obs


def test_labels_mismatch_and_missing():
    a = multi_library_tissue(n_per_lib=100)
    with pytest.raises(ValueError, match="pass n_niches=None"):
        nk.tl.teacher_niches(a, n_niches=7, method="labels", labels_key="true_niche")
    a.obs["ann"] = a.obs["true_niche"].astype(object)
    a.obs.iloc[0, a.obs.columns.get_loc("ann")] = None
    with pytest.raises(ValueError, match="unlabelled"):
        nk.tl.teacher_niches(a, n_niches=None, method="labels", labels_key="ann")
    assert "teacher_niche" not in a.obs


def test_teacher_niches_takes_the_model_and_its_settings(tissue):
    """teacher_niches(model=NicheTeacher(...)) is the same as the old keywords (which warn), the template is
    not modified, and a fitted teacher labels new cells without refitting."""
    new, old = tissue.copy(), tissue.copy()
    template = NicheTeacher(n_rings=2)
    nk.tl.teacher_niches(new, n_niches=4, model=template, progress=False)
    assert not template.is_fitted and template.n_niches is None  # a copy was fitted
    with pytest.warns(FutureWarning, match=r"model=nk.models.NicheTeacher\(n_rings=...\)"):
        nk.tl.teacher_niches(old, n_niches=4, n_rings=2, progress=False)
    np.testing.assert_array_equal(new.obsm["teacher_niche_proba"], old.obsm["teacher_niche_proba"])
    assert new.uns["teacher_niche"]["params"]["n_rings"] == 2
    same = tissue.copy()
    nk.tl.teacher_niches(same, model={"n_niches": 4, "n_rings": 2}, progress=False)
    np.testing.assert_array_equal(same.obsm["teacher_niche_proba"], new.obsm["teacher_niche_proba"])

    fitted = NicheTeacher(4, progress=False).fit(tissue.copy())
    other = tissue.copy()
    nk.tl.teacher_niches(other, model=fitted, progress=False)
    np.testing.assert_allclose(other.obsm["teacher_niche_proba"], fitted.predict_proba(other), atol=1e-5)
    assert other.uns["teacher_niche"]["params"]["fitted_on"] == "given model"
    with pytest.raises(ValueError, match="n_niches=5 but model has n_niches=4"):
        nk.tl.teacher_niches(tissue.copy(), n_niches=5, model=fitted, progress=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        nk.tl.teacher_niches(tissue.copy(), n_niches=4, n_ringz=2, progress=False)
    with pytest.warns(FutureWarning, match="return_model"):
        teacher = nk.tl.teacher_niches(tissue.copy(), n_niches=4, return_model=True, progress=False)
    assert isinstance(teacher, NicheTeacher) and teacher.is_fitted
