"""Shared neighbourhoods: the paper's radius rule, no crossing of sections, chunked means."""

import numpy as np
import pytest

from nichekd._core.neighbors import estimate_radius, neighbour_mean, radius_neighbours


def _grid(n_side: int, spacing: float = 10.0) -> np.ndarray:
    g = np.arange(n_side) * spacing
    return np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)


def test_radius_hits_expected_neighbour_count():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, size=(5000, 2))
    for target in (6, 12, 20):
        r = estimate_radius(xy, target)
        nb = radius_neighbours(xy, r, max_neighbors=4 * target)
        assert abs(nb.counts().mean() - target) < 0.1 * target


def test_radius_is_smallest_reaching_target():
    # on a square grid at 10 um spacing, edge cells have fewer neighbours: at 10 um the mean is below 4,
    # so the smallest radius whose mean count reaches 4 is the diagonal, 14.1 um
    xy = _grid(40)
    r = estimate_radius(xy, 4)
    assert r == pytest.approx(10.0 * np.sqrt(2), rel=1e-6)
    assert radius_neighbours(xy, r).counts().mean() >= 4
    assert radius_neighbours(xy, r * 0.99).counts().mean() < 4


def test_neighbourhoods_never_cross_groups():
    xy = np.concatenate([_grid(10), _grid(10)])  # two sections on the same coordinates
    groups = np.repeat(["a", "b"], 100)
    nb = radius_neighbours(xy, 15.0, groups=groups, max_neighbors=16)
    assert (nb.index[:, 0] == np.arange(200)).all()
    for i in range(200):
        nbr = nb.index[i][nb.mask[i]]
        assert (groups[nbr] == groups[i]).all()
    assert nb.counts().max() == 8  # interior point: 4 at 10 um, 4 at 14.1 um


def test_neighbour_mean_matches_dense_computation():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, size=(300, 2))
    feats = rng.normal(size=(300, 5)).astype(np.float32)
    nb = radius_neighbours(xy, 25.0, max_neighbors=64)
    got = neighbour_mean(feats, nb, chunk=37)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    w = (d <= 25.0).astype(float)
    want = w @ feats / w.sum(1, keepdims=True)
    assert np.allclose(got, want, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        estimate_radius(np.zeros((10, 2)), 0)
    with pytest.raises(ValueError, match="radius"):
        radius_neighbours(np.zeros((10, 2)), -1.0)
    with pytest.raises(ValueError, match="Too few"):
        estimate_radius(np.zeros((1, 2)), 3)
