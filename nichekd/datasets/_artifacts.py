"""Slide-preparation and scanning nuisance of the synthetic H&E, independent of the niches.

Real slides vary for reasons unrelated to biology: staining intensity drifts across the section (separately
for hematoxylin and eosin), section thickness changes (the whole area darker or lighter), fixation shrinks or
swells nuclei, the scanner vignettes every camera field and leaves regions out of focus, and handling adds
tissue folds (doubled tissue), tears and haemorrhage (red blood cells). These are the largest directions of
image-feature variance on real slides, so unsupervised clustering of image features finds them instead of
the niches, while a student supervised by the teacher learns to ignore them. Every field here is drawn from
the image random stream only, so cells, types and counts never depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import ndtri  # the normal quantile (norm.ppf) without importing scipy.stats

from ._cell_types import NucleusShapes
from ._niche_fields import SmoothField, smooth_field

# stain_variation s: log-sd of the hematoxylin and eosin intensity fields (plus a section-wide gradient of
# the same size), and of thickness (x THICKNESS_SHARE) and fixation nuclear size (x FIXATION_SHARE).
THICKNESS_SHARE, FIXATION_SHARE, GRADIENT_SHARE = 0.7, 0.4, 1.0
# correlation length of the stain fields, in niche lengths
STAIN_LENGTH = 1.5
# artifacts a: share of the area out of focus / in haemorrhage, folds and tears per mm^2 and vignetting depth
BLUR_AREA, BLUR_SIGMA_UM = 0.15, 1.5
HAEMORRHAGE_AREA, RBC_AREA_UM2 = 0.05, 45.0
FOLDS_PER_MM2, FOLD_WIDTH_UM, FOLD_OD_GAIN = 0.4, 40.0, 0.8
TEARS_PER_MM2, TEAR_WIDTH_UM = 0.4, 7.0
SCAN_FIELD_UM, VIGNETTE_DEPTH = 500.0, 0.08


@dataclass(frozen=True)
class _Band:
    """A wavy band across the section (fold or tear): centre point, direction, width and extent."""

    x0: float
    y0: float
    angle: float
    width_um: float
    length_um: float
    wave_amp_um: float
    wave_period_um: float
    wave_phase: float

    def weight(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """1 on the band's centre line, 0 beyond half its width or its ends (smooth profile)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        along = (x - self.x0) * c + (y - self.y0) * s
        across = -(x - self.x0) * s + (y - self.y0) * c
        across = across + self.wave_amp_um * np.sin(2 * np.pi * along / self.wave_period_um + self.wave_phase)
        profile = np.clip(1 - np.abs(across) / (self.width_um / 2), 0, 1)
        ends = np.clip((self.length_um / 2 - np.abs(along)) / (2 * self.width_um + 20.0), 0, 1)
        return np.sqrt(profile) * ends


@dataclass(frozen=True)
class SlideNuisance:
    """Nuisance fields of one slide; ``fields`` are sampled on the renderer's coarse grid."""

    stain_variation: float
    artifacts: float
    hematoxylin: SmoothField
    eosin: SmoothField
    thickness: SmoothField
    focus: SmoothField
    gradient: tuple[float, float, float, float]  # unit direction (x, y), section centre projection, scale
    folds: tuple[_Band, ...]
    tears: tuple[_Band, ...]
    blur_threshold: float

    @property
    def blur_sigma_um(self) -> float:
        return BLUR_SIGMA_UM if self.artifacts > 0 else 0.0

    def _gradient(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        gx, gy, centre, scale = self.gradient
        return GRADIENT_SHARE * (x * gx + y * gy - centre) / scale

    def log_hematoxylin(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Log multiplier of the hematoxylin concentration (staining and thickness)."""
        s = self.stain_variation
        return s * (
            self.hematoxylin.at(x, y) + self._gradient(x, y) + THICKNESS_SHARE * self.thickness.at(x, y)
        )

    def log_eosin(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Log multiplier of the eosin concentration: its own field, the same thickness, the opposite gradient
        (hematoxylin and eosin baths drift independently)."""
        s = self.stain_variation
        return s * (
            self.eosin.at(x, y) - 0.5 * self._gradient(x, y) + THICKNESS_SHARE * self.thickness.at(x, y)
        )

    def fold(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Extra tissue optical density from folds (doubled tissue), as a multiplier minus 1."""
        out = np.zeros(np.shape(x), dtype=np.float32)
        for band in self.folds:
            out = np.maximum(out, FOLD_OD_GAIN * band.weight(x, y))
        return out

    def tear(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Share of tissue missing (1 in the middle of a tear)."""
        out = np.zeros(np.shape(x), dtype=np.float32)
        for band in self.tears:
            out = np.maximum(out, np.clip(2.0 * band.weight(x, y), 0, 1))
        return out

    def blur(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Blend weight of the out-of-focus image (0 sharp, 1 fully blurred)."""
        if self.artifacts <= 0:
            return np.zeros(np.shape(x), dtype=np.float32)
        return np.clip((self.focus.at(x, y) - self.blur_threshold) / 0.4, 0, 1)

    def fields(self) -> list:
        """Smooth fields for the renderer's coarse grid, in this order."""
        return [self.log_hematoxylin, self.log_eosin, self.fold, self.tear, self.blur]

    def vignette_od(self, u_um: np.ndarray) -> np.ndarray:
        """Optical density added by the scanner's vignetting along one axis (it is separable: rows + cols)."""
        frac = (np.asarray(u_um) % SCAN_FIELD_UM) / SCAN_FIELD_UM
        return (-np.log1p(-VIGNETTE_DEPTH * self.artifacts * (2 * frac - 1) ** 2 / 2)).astype(np.float32)


def _bands(rng, n, width_um, height_um, band_width, length_range) -> tuple[_Band, ...]:
    out = []
    for _ in range(n):
        out.append(
            _Band(
                x0=float(rng.uniform(0.2, 0.8) * width_um),
                y0=float(rng.uniform(0.2, 0.8) * height_um),
                angle=float(rng.uniform(0, np.pi)),
                width_um=float(band_width * rng.uniform(0.7, 1.3)),
                length_um=float(rng.uniform(*length_range) * min(width_um, height_um)),
                wave_amp_um=float(rng.uniform(10, 40)),
                wave_period_um=float(rng.uniform(300, 900)),
                wave_phase=float(rng.uniform(0, 2 * np.pi)),
            )
        )
    return tuple(out)


def _count(rng: np.random.Generator, rate: float) -> int:
    """Poisson count, at least one when the rate is positive (every artifacted slide shows each kind)."""
    return 0 if rate <= 0 else max(1, int(rng.poisson(rate)))


def make_nuisance(
    rng: np.random.Generator,
    width_um: float,
    height_um: float,
    niche_length_um: float,
    *,
    stain_variation: float,
    artifacts: float,
) -> SlideNuisance:
    """Draw one slide's nuisance; correlation lengths are comparable to the niches' (so that neighbourhood
    averaging does not remove them) or longer."""
    angle = rng.uniform(0, 2 * np.pi)
    gx, gy = float(np.cos(angle)), float(np.sin(angle))
    centre = gx * width_um / 2 + gy * height_um / 2
    # the projection spans about +-1 over the section: a drift of one log-sd from side to side
    scale = 0.5 * (abs(gx) * width_um + abs(gy) * height_um) + 1e-6
    area_mm2 = width_um * height_um / 1e6
    return SlideNuisance(
        stain_variation=float(stain_variation),
        artifacts=float(artifacts),
        hematoxylin=smooth_field(rng, width_um, height_um, STAIN_LENGTH * niche_length_um),
        eosin=smooth_field(rng, width_um, height_um, STAIN_LENGTH * niche_length_um),
        thickness=smooth_field(rng, width_um, height_um, niche_length_um),
        focus=smooth_field(rng, width_um, height_um, niche_length_um),
        gradient=(gx, gy, float(centre), float(scale)),
        folds=_bands(
            rng,
            _count(rng, FOLDS_PER_MM2 * area_mm2 * artifacts),
            width_um,
            height_um,
            FOLD_WIDTH_UM,
            (0.3, 0.8),
        ),  # fmt: skip
        tears=_bands(
            rng,
            _count(rng, TEARS_PER_MM2 * area_mm2 * artifacts),
            width_um,
            height_um,
            TEAR_WIDTH_UM,
            (0.1, 0.3),
        ),  # fmt: skip
        blur_threshold=float(ndtri(1 - min(BLUR_AREA * artifacts, 0.9))) if artifacts > 0 else np.inf,
    )


def fixation_nuclei(
    rng: np.random.Generator, nuclei: NucleusShapes, xy: np.ndarray, field_length_um: float, strength: float
) -> NucleusShapes:
    """Nuclei shrunk or swollen by a smooth fixation field (log-sd ``strength``), the same for every type."""
    if strength <= 0:
        return nuclei
    width, height = float(xy[:, 0].max()) + 1.0, float(xy[:, 1].max()) + 1.0
    field = smooth_field(rng, width, height, field_length_um)
    factor = np.exp(strength * field.at(xy[:, 0], xy[:, 1]).astype(np.float64))
    return replace(
        nuclei, semi_major_um=nuclei.semi_major_um * factor, semi_minor_um=nuclei.semi_minor_um * factor
    )


def red_blood_cells(
    rng: np.random.Generator,
    width_um: float,
    height_um: float,
    niche_length_um: float,
    inside,
    strength: float,
) -> tuple[np.ndarray, NucleusShapes]:
    """Red blood cells in haemorrhage patches (``HAEMORRHAGE_AREA * strength`` of the section): anucleate
    eosin-dense discs of about 7 um, rendered but not part of the table."""
    empty = NucleusShapes(*(np.zeros(0) for _ in range(8)))
    if strength <= 0:
        return np.zeros((0, 2)), empty
    field = smooth_field(rng, width_um, height_um, 0.5 * niche_length_um)
    n = rng.poisson(width_um * height_um / RBC_AREA_UM2)
    xy = rng.uniform([0, 0], [width_um, height_um], size=(n, 2))
    cut = ndtri(1 - min(HAEMORRHAGE_AREA * strength, 0.5))
    keep = (field.at(xy[:, 0], xy[:, 1]) > cut) & inside(xy[:, 0], xy[:, 1])
    xy = xy[keep]
    m = len(xy)
    radius = 3.6 * np.exp(0.08 * rng.standard_normal(m))
    shapes = NucleusShapes(
        semi_major_um=np.full(m, 0.5),  # no nucleus: zero hematoxylin, a minimal ellipse for the stamp
        semi_minor_um=np.full(m, 0.5),
        angle=np.zeros(m),
        hematoxylin=np.zeros(m),
        cytoplasm_eosin=1.5 * np.exp(0.1 * rng.standard_normal(m)),
        cell_radius_um=radius,
        irregularity=np.zeros(m),
        lobe_phase=np.zeros(m),
    )
    return xy, shapes


def concat_shapes(a: NucleusShapes, b: NucleusShapes) -> NucleusShapes:
    """Cells of ``a`` followed by those of ``b``."""
    return NucleusShapes(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in a.__dataclass_fields__))
