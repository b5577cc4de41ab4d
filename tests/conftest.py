"""Shared fixtures: the real-data folder (skipped with a reason where absent) and small synthetic inputs."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """``NICHEKD_DATA_DIR`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("NICHEKD_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; tests that use it skip with a clear reason where it is absent."""
    d = data_dir()
    if not d.is_dir():
        pytest.skip(f"real data not found at {d} (set NICHEKD_DATA_DIR to the shared data folder)")
    return d


def dataset_path(name: str) -> Path:
    """One real dataset folder, or skip."""
    p = data_dir() / name
    if not p.exists():
        pytest.skip(f"dataset {name!r} not found under {data_dir()} (set NICHEKD_DATA_DIR)")
    return p


@pytest.fixture
def slide():
    """600 cells on an H&E image, the user's obs['teacher_niche'] (no record), colour features, a split: the
    object the write-policy and review tests of test_hostile*.py refuse to damage."""
    from test_predict import _cells, fake_histology_features

    import nichekd as nk

    sdata = _cells(n=600)
    fake_histology_features(sdata, patch_size_um=40.0)
    nk.pp.spatial_split(sdata)
    return sdata
