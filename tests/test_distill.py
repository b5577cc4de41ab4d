"""distill / NicheStudent: learning, outputs, determinism, leak-free neighbourhoods, save/load, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_distill_data import one_torch_thread, toy_tissue  # noqa: F401

from nichekd.models import NicheStudent
from nichekd.models.student import distillation_loss
from nichekd.tl import distill

FAST = {"epochs": 8, "progress": False, "device": "cpu"}


def _test_accuracy(t, key="student_niche"):
    te = (t.obs["split"] == "test").to_numpy()
    return (t.obs[key].astype(str)[te] == t.obs["teacher_niche"].astype(str)[te]).mean()


def test_loss_is_scaled_kl():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    assert float(distillation_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([[0.0, 1.0, 0.0]])
    p = torch.softmax(t / 2, 1)
    kl = float((p * (torch.log(p) - torch.log_softmax(s / 2, 1))).sum())
    assert float(distillation_loss(s, t, 2.0)) == pytest.approx(4 * kl, rel=1e-5)


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_distill_learns_the_teacher_and_writes_outputs(architecture):
    sdata = toy_tissue()
    t = sdata.tables["table"]
    model = distill(sdata, features_key="feats", architecture=architecture, **FAST)
    assert isinstance(model, NicheStudent) and model.radius_um == 45.0  # the teacher's radius is reused
    assert list(t.obs["student_niche"].cat.categories) == ["N0", "N1", "N2", "N3"]
    proba = t.obsm["student_niche_proba"]
    assert proba.shape == (t.n_obs, 4) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert (t.obs["student_niche_entropy"] >= 0).all()
    hist = t.uns["student_niche"]["history"]
    assert len(hist["train_loss"]) >= 1 and len(hist["val_loss"]) == len(hist["train_loss"])
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert t.uns["student_niche"]["params"]["architecture"] == architecture
    # single-cell features are noisy (a per-cell nearest-centre rule gets ~0.6); neighbourhoods fix that
    assert _test_accuracy(t) > 0.85


def test_same_seed_same_model_and_other_seed_differs():
    runs = []
    for seed in (0, 0, 1):
        sdata = toy_tissue()
        distill(
            sdata,
            features_key="feats",
            architecture="transformer",
            random_state=seed,
            epochs=2,
            progress=False,
            device="cpu",
        )
        runs.append(sdata.tables["table"].obsm["student_niche_proba"])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_hard_label_teacher_and_estimated_radius():
    sdata = toy_tissue(logits=False)
    t = sdata.tables["table"]
    del t.uns["teacher_niche"]
    distill(sdata, architecture="mlp", n_neighbors_target=8, **FAST)  # the only feature set is found
    assert t.uns["student_niche"]["params"]["teacher_source"].endswith("(one-hot)")
    assert 10 < t.uns["student_niche"]["params"]["radius_um"] < 60
    assert _test_accuracy(t) > 0.8


def test_test_cells_never_see_training_cells():
    sdata = toy_tissue()
    t = sdata.tables["table"]
    model = distill(sdata, features_key="feats", architecture="transformer", epochs=2, progress=False)
    split = t.obs["split"].astype(str).to_numpy()
    groups = np.char.add("L1|", split.astype(str))
    feats = t.obsm["feats"].copy()
    base = model.predict_proba(feats, t.obsm["spatial"], groups=groups)
    feats[split == "train"] = np.random.default_rng(1).normal(size=feats[split == "train"].shape)
    after = model.predict_proba(feats, t.obsm["spatial"], groups=groups)
    te = split == "test"
    np.testing.assert_allclose(after[te], base[te], atol=1e-6)
    np.testing.assert_allclose(base[te], t.obsm["student_niche_proba"][te], atol=1e-5)
    assert not np.allclose(after[split == "train"], base[split == "train"])


def test_save_load_round_trip(tmp_path):
    sdata = toy_tissue()
    t = sdata.tables["table"]
    model = distill(sdata, features_key="feats", architecture="transformer", epochs=2, progress=False)
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["niche_names"] == ["N0", "N1", "N2", "N3"] and cfg["encoder"]["backbone"] == "toy"
    assert cfg["radius_um"] == 45.0 and cfg["n_features"] == 32 and "torch" in cfg["versions"]
    loaded = NicheStudent.load(tmp_path / "m")
    xy = t.obsm["spatial"]
    np.testing.assert_allclose(
        loaded.predict_proba(t.obsm["feats"], xy), model.predict_proba(t.obsm["feats"], xy), atol=1e-6
    )
    np.testing.assert_array_equal(loaded.feature_mean, model.feature_mean)
    assert loaded.batch_size_used == model.batch_size_used > 0  # was missing after load
    assert NicheStudent(3, radius_um=10.0).batch_size_used is None
    with pytest.raises(ValueError, match="expects 32 features"):
        loaded.predict_proba(t.obsm["feats"][:, :10], xy)
    with pytest.raises(FileNotFoundError):
        NicheStudent.load(tmp_path / "missing")


def _nan_features(t):
    t.obsm["feats"][5] = np.nan


def _few_train(t):
    t.obs["split"] = t.obs["split"].cat.set_categories(["train", "test", "buffer"])
    t.obs.loc[t.obs_names[5:], "split"] = "test"


@pytest.mark.parametrize(
    "change, kwargs, error",
    [
        (None, {"teacher_key": "nope"}, "teacher_niches"),
        (None, {"features_key": "nope"}, "histology_features"),
        (None, {"split_key": "nope"}, "spatial_split"),
        (None, {"architecture": "cnn"}, "architecture"),
        (_nan_features, {}, "NaN"),
        (_few_train, {}, "training cells"),
        (None, {"val_blocks": 0}, "val_blocks"),
        (None, {"context_scales": (-1.0,)}, "context_scales"),
        (
            lambda t: t.obsm.__setitem__("teacher_niche_logits", np.zeros((t.n_obs, 3))),
            {},
            "same teacher run",
        ),
    ],
)
def test_bad_input_raises_and_writes_nothing(change, kwargs, error):
    sdata = toy_tissue(n=400)
    t = sdata.tables["table"]
    if change is not None:
        change(t)
    before = (set(t.obs.columns), set(t.obsm.keys()), set(t.uns.keys()))
    args = {"features_key": "feats", **FAST, **kwargs}
    with pytest.raises((ValueError, KeyError), match=error):
        distill(sdata, **args)
    assert (set(t.obs.columns), set(t.obsm.keys()), set(t.uns.keys())) == before


def test_validation_blocks_are_spread_coherent_and_sized():
    from nichekd.tl._distill import validation_blocks

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (4000, 2))
    libs = np.where(np.arange(4000) < 2000, "A", "B")
    cand = np.flatnonzero(np.arange(4000) % 10 != 0)  # some cells are not candidates (e.g. test)
    val = validation_blocks(xy, cand, libs, 0.1, np.random.default_rng(1), n_blocks=4)
    assert not val[np.arange(4000) % 10 == 0].any()
    for lib in ("A", "B"):
        share = val[cand][libs[cand] == lib].mean()
        assert 0.07 < share < 0.13, share
        # several blocks in different places: the validation cells span more than one band in x and y
        pts = xy[val & (libs == lib)]
        assert np.ptp(pts[:, 0]) > 300 and np.ptp(pts[:, 1]) > 300
    # spatially coherent: most validation cells' nearest candidate neighbours are validation cells too
    from scipy.spatial import cKDTree

    in_a = cand[libs[cand] == "A"]
    _, j = cKDTree(xy[in_a]).query(xy[val & (libs == "A")], k=2)
    assert val[in_a[j[:, 1]]].mean() > 0.6
    np.testing.assert_array_equal(val, validation_blocks(xy, cand, libs, 0.1, np.random.default_rng(1)))


def test_min_epochs_delays_model_selection():
    sdata = toy_tissue(n=600)
    t = sdata.tables["table"]
    distill(sdata, features_key="feats", architecture="mlp", epochs=12, min_epochs=6, patience=1,
            progress=False, device="cpu")  # fmt: skip
    hist = t.uns["student_niche"]["history"]
    assert hist["best_epoch"] >= 5 and len(hist["val_loss"]) >= 6
    assert t.uns["student_niche"]["params"]["min_epochs"] == 6


def test_context_means_match_a_direct_count_and_do_not_depend_on_far_cells():
    from nichekd.models._context import context_means, context_reach

    rng = np.random.default_rng(0)
    x, xy = rng.normal(size=(3000, 4)), rng.uniform(0, 3000, (3000, 2))
    ctx = context_means(x, xy, 50.0, (2.0, 4.0))
    side = 2.0 * 50.0 / 2  # scale 2: half-width 100 um in bins of 50 um, a 5 x 5 bin window
    b = np.floor(xy / side).astype(int)
    for i in (0, 17, 2999):
        near = (np.abs(b - b[i]) <= 2).all(1)
        np.testing.assert_allclose(ctx[i, 0], x[near].mean(0), rtol=1e-5)
    # a window never crosses groups
    groups = np.where(xy[:, 0] < 1500, "a", "b")
    g = context_means(x, xy, 50.0, (2.0,), groups)
    i = int(np.flatnonzero((groups == "a") & (xy[:, 0] > 1450))[0])
    near = (np.abs(b - b[i]) <= 2).all(1) & (groups == "a")
    np.testing.assert_allclose(g[i, 0], x[near].mean(0), rtol=1e-5)
    # a spatial crop with a halo of the reach gives the same numbers, bit for bit (dask partitions)
    reach = context_reach(50.0, (2.0, 4.0))
    sub = np.flatnonzero(np.abs(xy - 1500).max(1) < 1000)
    inner = np.abs(xy[sub] - 1500).max(1) < 1000 - reach
    np.testing.assert_array_equal(context_means(x[sub], xy[sub], 50.0, (2.0, 4.0))[inner], ctx[sub][inner])


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_context_scales_train_save_and_load(architecture, tmp_path):
    sdata = toy_tissue()
    t = sdata.tables["table"]
    model = distill(sdata, features_key="feats", architecture=architecture, context_scales=(2.0, 4.0), **FAST)
    assert model.context_scales == (2.0, 4.0) and model.halo_um > 4 * 45.0
    assert t.uns["student_niche"]["params"]["context_scales"] == [2.0, 4.0]
    assert _test_accuracy(t) > 0.85
    model.save(tmp_path / "m")
    loaded = NicheStudent.load(tmp_path / "m")
    assert loaded.context_scales == (2.0, 4.0)
    xy = t.obsm["spatial"]
    np.testing.assert_allclose(
        loaded.predict_proba(t.obsm["feats"], xy), model.predict_proba(t.obsm["feats"], xy), atol=1e-6
    )
    with pytest.raises(ValueError, match="context_scales"):
        NicheStudent(4, radius_um=45.0, context_scales=(0.0,))


def test_seed_ensemble_averages_members_and_round_trips(tmp_path):
    sdata = toy_tissue(n=800)
    t = sdata.tables["table"]
    single = distill(sdata, features_key="feats", architecture="mlp", key_added="one", **FAST)
    model = distill(sdata, features_key="feats", architecture="mlp", n_members=2, key_added="two", **FAST)
    assert t.uns["two"]["params"]["n_members"] == 2 and len(model.module.members) == 2
    # member 0 is the single student of the same seed; the ensemble averages it with another seed's
    xy = t.obsm["spatial"]
    z = torch.from_numpy(model.transform(t.obsm["feats"]))
    nb = model.neighbourhoods(xy)
    args = (z, xy, nb, np.arange(t.n_obs), "cpu", 512)
    member0 = model.module.members[0]
    model.module, ens = member0, model.module
    np.testing.assert_allclose(model._logits(*args), single._logits(*args), atol=1e-5)
    model.module = ens
    assert not np.allclose(t.obsm["two_proba"], t.obsm["one_proba"])
    assert _test_accuracy(t, "two") > 0.85
    model.save(tmp_path / "m")
    loaded = NicheStudent.load(tmp_path / "m")
    assert loaded.n_members == 2
    np.testing.assert_allclose(
        loaded.predict_proba(t.obsm["feats"], xy), model.predict_proba(t.obsm["feats"], xy), atol=1e-6
    )
    with pytest.raises(ValueError, match="n_members"):
        NicheStudent(4, radius_um=45.0, n_members=0)


def _distill_inputs(sdata, model):
    """The cells, masks and groups distill trains ``model`` on (its own rules, recomputed here)."""
    from nichekd._core.table import library_labels
    from nichekd.pp._split import split_groups
    from nichekd.tl._distill import teacher_targets, validation_blocks

    t = sdata.tables["table"]
    logits, names, _ = teacher_targets(t, "teacher_niche")
    xy = np.asarray(t.obsm["spatial"], dtype=float)
    libs = np.asarray(library_labels(t)).astype(str)
    split = t.obs["split"].astype(str).to_numpy()
    trainable = split == "train"
    rng = np.random.default_rng(0)
    val = validation_blocks(xy, np.flatnonzero(trainable), libs, model.val_fraction, rng, model.val_blocks)
    groups = split_groups(libs, np.where(val, "val", split))
    return (
        t.obsm["feats"],
        logits,
        xy,
        names,
        {"groups": groups, "train_mask": trainable & ~val, "val_mask": val},
    )


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_fit_equals_distill_for_the_same_settings(architecture):
    """The model carries its defaults once: NicheStudent(...).fit on distill's cells and masks trains the same
    model as distill(model=NicheStudent(...)) (the two used to differ: n_components 128 vs 32, min_epochs
    0 vs 10)."""
    sdata = toy_tissue()
    settings = {"architecture": architecture, "epochs": 12}
    by_distill = distill(
        sdata, features_key="feats", model=NicheStudent(**settings), progress=False, device="cpu"
    )
    feats, logits, xy, names, masks = _distill_inputs(sdata, by_distill)
    direct = NicheStudent(niche_names=names, radius_um=by_distill.radius_um, **settings)
    direct.fit(feats, logits, xy, device="cpu", random_state=0, progress=False, **masks)
    assert direct.n_components == by_distill.n_components == 32 and direct.min_epochs == 10
    assert direct.max_neighbors == by_distill.max_neighbors
    np.testing.assert_allclose(
        direct.predict_proba(feats, xy, groups=masks["groups"]),
        by_distill.predict_proba(feats, xy, groups=masks["groups"]),
        atol=1e-6,
    )


def test_distill_model_argument_and_the_deprecated_keywords():
    template = NicheStudent(architecture="mlp", epochs=3)
    new = toy_tissue()
    model = distill(new, features_key="feats", model=template, progress=False, device="cpu")
    assert model is not template and not template.is_fitted and template.radius_um is None  # not modified
    old = toy_tissue()
    with pytest.warns(FutureWarning, match=r"model=nk.models.NicheStudent\(architecture=..., epochs=...\)"):
        distill(old, features_key="feats", architecture="mlp", epochs=3, progress=False, device="cpu")
    np.testing.assert_array_equal(
        old.tables["table"].obsm["student_niche_proba"], new.tables["table"].obsm["student_niche_proba"]
    )
    same = toy_tissue()
    distill(
        same, features_key="feats", model={"architecture": "mlp", "epochs": 3}, progress=False, device="cpu"
    )
    np.testing.assert_array_equal(
        same.tables["table"].obsm["student_niche_proba"], new.tables["table"].obsm["student_niche_proba"]
    )
    with pytest.raises(ValueError, match="already fitted"):
        distill(toy_tissue(), features_key="feats", model=model, progress=False)
    with pytest.raises(ValueError, match="n_niches=3 but the teacher has 4"):
        distill(toy_tissue(), features_key="feats", model=NicheStudent(3), progress=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        distill(toy_tissue(), features_key="feats", epochz=3, progress=False)
    with pytest.warns(FutureWarning, match=r"NicheStudent\(epochs=...\)"):
        NicheStudent(3, radius_um=40.0, architecture="mlp").fit(
            np.zeros((40, 2), "float32"), np.zeros((40, 3)), np.random.default_rng(0).uniform(0, 100, (40, 2)),
            epochs=1, progress=False,
        )  # fmt: skip
