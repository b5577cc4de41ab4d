"""The dataset loaders find their files the way an installed package must: argument, NICHEKD_DATA_DIR, cache."""

from __future__ import annotations

import pytest

import nichekd as nk
from nichekd.datasets import _public


@pytest.fixture
def no_repo(monkeypatch, tmp_path):
    """Act as an installed wheel: no source checkout beside the package, run from an unrelated folder."""
    monkeypatch.setattr(_public, "_REPO", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NICHEKD_DATA_DIR", raising=False)
    monkeypatch.setenv("NICHEKD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_cache_folder_is_found(no_repo):
    (no_repo / "cache" / "data" / "st_mob").mkdir(parents=True)
    assert nk.datasets.resolve_data_dir(dataset="st_mob") == no_repo / "cache" / "data" / "st_mob"


def test_environment_variable_wins(no_repo, monkeypatch):
    (no_repo / "mine" / "st_mob").mkdir(parents=True)
    (no_repo / "cache" / "data" / "st_mob").mkdir(parents=True)
    monkeypatch.setenv("NICHEKD_DATA_DIR", str(no_repo / "mine"))
    assert nk.datasets.resolve_data_dir(dataset="st_mob") == no_repo / "mine" / "st_mob"


def test_missing_dataset_names_origin_and_places(no_repo):
    with pytest.raises(FileNotFoundError) as err:
        nk.datasets.st_mob()
    msg = str(err.value)
    assert "STUtility" in msg and "NICHEKD_DATA_DIR" in msg and str(no_repo / "cache" / "data") in msg


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("NICHEKD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert nk.datasets.cache_dir() == tmp_path / "nichekd"
