"""Stain and texture features without a deep model, and stain normalisation (Reinhard, Macenko).

Colour deconvolution follows :func:`skimage.color.rgb2hed` (Ruifrok & Johnston), written out so that it runs
on a whole batch at once.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ._base import BackboneSpec, Encoder

_LOG_ADJUST = np.log(1e-6)
# Fixed thresholds (rgb2hed units) keep features comparable across slides: tissue has optical density,
# nuclei are hematoxylin-dark.
TISSUE_OD = 0.15
NUCLEAR_H = 0.05
GLCM_LEVELS = 8
GLCM_H_MAX = 0.12

FEATURE_NAMES = (
    "tissue_fraction", "h_mean", "e_mean", "h_std", "e_std",
    "h_p10", "h_p50", "h_p90", "e_p10", "e_p50", "e_p90", "h_e_ratio",
    "nuclear_fraction", "nuclear_blob_density",
    "glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation", "glcm_entropy",
    "h_gradient", "e_gradient",
    "r_mean", "g_mean", "b_mean", "r_std", "g_std", "b_std",
)  # fmt: skip

SPEC = BackboneSpec(
    name="stain",
    kind="handcrafted",
    input_size=64,
    mpp=1.0,
    output_dim=len(FEATURE_NAMES),
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    weights="none (colour deconvolution, GLCM texture, nuclear density)",
    needs="",
    embedding=f"{len(FEATURE_NAMES)} stain/texture statistics (FEATURE_NAMES)",
)


def _hed_from_rgb() -> np.ndarray:
    from skimage.color.colorconv import hed_from_rgb

    return np.asarray(hed_from_rgb, dtype=np.float32)


def rgb_to_hed(patches: np.ndarray) -> np.ndarray:
    """``(n, 3, h, w)`` uint8 RGB -> ``(n, 3, h, w)`` float32 hematoxylin, eosin, DAB (as ``rgb2hed``)."""
    rgb = np.maximum(patches.astype(np.float32) / 255.0, 1e-6)
    log_rgb = np.log(rgb) / np.float32(_LOG_ADJUST)
    hed = np.einsum("nchw,cd->ndhw", log_rgb, _hed_from_rgb(), optimize=True)
    return np.maximum(hed, 0.0)


def _glcm_stats(q: np.ndarray) -> np.ndarray:
    """Contrast, homogeneity, energy, correlation, entropy of the symmetric co-occurrence matrix of each
    quantised patch ``q`` (n, h, w) for unit offsets right and down."""
    n, levels = len(q), GLCM_LEVELS
    base = (np.arange(n, dtype=np.int32) * levels * levels)[:, None, None]
    codes = np.concatenate(
        [
            (base + q[:, :, :-1] * levels + q[:, :, 1:]).ravel(),
            (base + q[:, :-1, :] * levels + q[:, 1:, :]).ravel(),
        ]
    )
    p = np.bincount(codes, minlength=n * levels * levels).reshape(n, levels, levels).astype(np.float64)
    p = p + p.transpose(0, 2, 1)
    p /= p.sum(axis=(1, 2), keepdims=True)
    i, j = np.meshgrid(np.arange(levels), np.arange(levels), indexing="ij")
    contrast = (p * (i - j) ** 2).sum(axis=(1, 2))
    homogeneity = (p / (1.0 + (i - j) ** 2)).sum(axis=(1, 2))
    energy = np.sqrt((p**2).sum(axis=(1, 2)))
    mu = (p * i).sum(axis=(1, 2))
    var = (p * (i - mu[:, None, None]) ** 2).sum(axis=(1, 2))
    cov = (p * (i - mu[:, None, None]) * (j - mu[:, None, None])).sum(axis=(1, 2))
    correlation = np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=(1, 2))
    return np.stack([contrast, homogeneity, energy, correlation, entropy], axis=1)


def _blob_density(h: np.ndarray) -> np.ndarray:
    """Local maxima of the smoothed hematoxylin above :data:`NUCLEAR_H`, per 1000 pixels."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(h)[:, None]
    smooth = F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)
    # separable 5 x 5 maximum: two cheap 1-D passes
    local_max = F.max_pool2d(
        F.max_pool2d(smooth, (1, 5), stride=1, padding=(0, 2)), (5, 1), stride=1, padding=(2, 0)
    )
    peak = (smooth == local_max) & (smooth > NUCLEAR_H)
    return peak.flatten(1).sum(1).numpy() * (1000.0 / h[0].size)


def stain_features(patches: np.ndarray) -> np.ndarray:
    """``(n, 3, h, w)`` uint8 RGB patches -> ``(n, 27)`` float32 stain/texture features (see FEATURE_NAMES)."""
    x = np.asarray(patches)
    n = len(x)
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    hed = rgb_to_hed(x)
    h, e = hed[:, 0].reshape(n, -1), hed[:, 1].reshape(n, -1)
    od = -np.log(np.maximum(x.astype(np.float32) / 255.0, 1e-3)).sum(1).reshape(n, -1)
    tissue = (od > TISSUE_OD).mean(1)
    hp = np.percentile(h, [10, 50, 90], axis=1).T
    ep = np.percentile(e, [10, 50, 90], axis=1).T
    hm, em = h.mean(1), e.mean(1)
    q = np.clip(hed[:, 0] * np.float32(GLCM_LEVELS / GLCM_H_MAX), 0, GLCM_LEVELS - 1).astype(np.int32)
    gy_h, gx_h = (
        np.abs(np.diff(hed[:, 0], axis=1)).mean((1, 2)),
        np.abs(np.diff(hed[:, 0], axis=2)).mean((1, 2)),
    )
    gy_e, gx_e = (
        np.abs(np.diff(hed[:, 1], axis=1)).mean((1, 2)),
        np.abs(np.diff(hed[:, 1], axis=2)).mean((1, 2)),
    )
    rgb = x.reshape(n, 3, -1).astype(np.float32) / 255.0
    cols = [
        tissue[:, None], hm[:, None], em[:, None], h.std(1)[:, None], e.std(1)[:, None], hp, ep,
        (hm / np.maximum(em, 1e-6))[:, None], (h > NUCLEAR_H).mean(1)[:, None],
        _blob_density(hed[:, 0])[:, None], _glcm_stats(q), (gy_h + gx_h)[:, None], (gy_e + gx_e)[:, None],
        rgb.mean(2), rgb.std(2),
    ]  # fmt: skip
    return np.concatenate(cols, axis=1).astype(np.float32)


class StainEncoder(Encoder):
    """Hand-crafted stain and texture features; CPU only, vectorised over the batch."""

    def __init__(self, spec: BackboneSpec = SPEC) -> None:
        self.spec = spec
        self.device = "cpu"

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Features of ``(n, 3, s, s)`` uint8 patches."""
        return stain_features(patches)


def build(device: str = "cpu", **_: Any) -> StainEncoder:
    """The stain/texture encoder (``device`` is ignored: it runs on CPU)."""
    return StainEncoder()


# ---------------------------------------------------------------- stain normalisation


def _od(patches: np.ndarray) -> np.ndarray:
    """``(n, 3, h, w)`` uint8 -> ``(n * h * w, 3)`` optical density."""
    rgb = np.moveaxis(np.asarray(patches, dtype=np.float32), 1, -1).reshape(-1, 3)
    return -np.log((rgb + 1.0) / 256.0)


def _lab(patches: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.moveaxis(np.asarray(patches), 1, -1))


def macenko_reference(patches: np.ndarray, beta: float = 0.15, alpha: float = 1.0) -> dict[str, list]:
    """Stain matrix (H, E columns in OD space) and 99th-percentile concentrations (Macenko et al. 2009)."""
    od = _od(patches)
    od = od[(od > beta).all(1)]
    if len(od) < 10:
        raise ValueError(
            "Too little stained tissue in the reference patches to estimate stain vectors (Macenko)."
        )
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    # hematoxylin absorbs more red than eosin does
    stains = np.stack([v1, v2], 1) if v1[0] > v2[0] else np.stack([v2, v1], 1)
    stains = stains * np.sign(stains.sum(0, keepdims=True))
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    return {"stain_matrix": stains.tolist(), "max_concentrations": np.percentile(conc, 99, axis=1).tolist()}


def reinhard_reference(patches: np.ndarray) -> dict[str, list]:
    """Mean and standard deviation of each LAB channel over the reference patches (Reinhard et al. 2001)."""
    lab = _lab(patches).reshape(-1, 3)
    return {"lab_mean": lab.mean(0).tolist(), "lab_std": lab.std(0).tolist()}


def stain_reference(method: str, patches: np.ndarray) -> dict[str, Any]:
    """Reference statistics for ``method`` (``"macenko"`` or ``"reinhard"``) from ``(n, 3, h, w)`` patches."""
    ref = macenko_reference(patches) if method == "macenko" else reinhard_reference(patches)
    return {"method": method, **ref}


def normalize_stain(patches: np.ndarray, method: str, reference: dict[str, Any]) -> np.ndarray:
    """Map each patch's stain statistics onto ``reference`` (a dict from :func:`stain_reference`)."""
    x = np.asarray(patches)
    n, _, hh, ww = x.shape
    if method == "reinhard":
        from skimage.color import lab2rgb

        lab = _lab(x)
        mu = lab.mean(axis=(1, 2), keepdims=True)
        sd = lab.std(axis=(1, 2), keepdims=True) + 1e-6
        lab = (lab - mu) / sd * np.asarray(reference["lab_std"]) + np.asarray(reference["lab_mean"])
        with warnings.catch_warnings():  # out-of-gamut colours are clipped, as intended
            warnings.simplefilter("ignore", UserWarning)
            rgb = lab2rgb(lab)
        return np.moveaxis(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8), -1, 1)
    out = np.empty_like(x)
    ref_stains = np.asarray(reference["stain_matrix"])
    ref_max = np.asarray(reference["max_concentrations"])
    for i in range(n):  # each patch has its own stain vectors
        od = _od(x[i : i + 1])
        try:
            own = macenko_reference(x[i : i + 1])
        except ValueError:  # background-only patch: nothing to normalise
            out[i] = x[i]
            continue
        stains = np.asarray(own["stain_matrix"])
        conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
        conc *= (ref_max / np.maximum(np.asarray(own["max_concentrations"]), 1e-6))[:, None]
        rgb = 256.0 * np.exp(-(ref_stains @ conc)) - 1.0
        out[i] = np.clip(rgb.T.reshape(hh, ww, 3) + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out
