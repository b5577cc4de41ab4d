"""Levers that keep very large sections (Visium HD, ~660k bins) affordable without changing small ones."""

import numpy as np
import pytest

from nichekd.models import NicheStudent


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 600, (n, 2))
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    teacher = (feats[:, :3] * 2).astype(np.float32)
    return feats, teacher, xy


def test_epoch_cells_leaves_training_sets_up_to_its_size_unchanged():
    feats, teacher, xy = _data()
    kw = {"radius_um": 60.0, "architecture": "mlp", "epochs": 3, "min_epochs": 0}
    a = NicheStudent(3, epoch_cells=None, **kw).fit(feats, teacher, xy, random_state=0)
    b = NicheStudent(3, epoch_cells=len(feats), **kw).fit(feats, teacher, xy, random_state=0)
    np.testing.assert_array_equal(a.predict_proba(feats, xy), b.predict_proba(feats, xy))
    assert a.history["train_loss"] == b.history["train_loss"]


def test_epoch_cells_draws_a_subset_each_epoch_and_is_saved(tmp_path):
    feats, teacher, xy = _data()
    kw = {"radius_um": 60.0, "architecture": "mlp", "epochs": 3, "min_epochs": 0}
    full = NicheStudent(3, epoch_cells=None, **kw).fit(feats, teacher, xy, random_state=0)
    sub = NicheStudent(3, epoch_cells=100, **kw).fit(feats, teacher, xy, random_state=0)
    assert len(sub.history["train_loss"]) == 3
    assert not np.array_equal(full.predict_proba(feats, xy), sub.predict_proba(feats, xy))
    loaded = NicheStudent.load(sub.save(tmp_path / "m"))
    assert loaded.epoch_cells == 100 and loaded.get_params()["epoch_cells"] == 100
    np.testing.assert_allclose(loaded.predict_proba(feats, xy), sub.predict_proba(feats, xy), atol=1e-6)
    with pytest.raises(ValueError, match="epoch_cells"):
        NicheStudent(3, epoch_cells=0)
