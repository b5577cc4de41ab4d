"""The student's torch networks (imported when a student is built, fitted or loaded, never by ``import nichekd``).

- :class:`TransformerStudent`: tokens = projected features + relative position encoding, read out at the
  centre token;
- :class:`MLPStudent`: an MLP on ``[own features, mean of neighbourhood features]``;
- :class:`Ensemble`: members trained from different seeds, averaged in probability.
"""

from __future__ import annotations

import torch
from torch import nn

from ._position import RelativePositionEncoding


class TransformerStudent(nn.Module):
    """Tokens = projected features + position encoding; read out at the centre token (index 0)."""

    def __init__(
        self,
        n_features: int,
        n_niches: int,
        radius_um: float,
        d_model: int,
        n_layers: int,
        n_heads: int,
        dropout: float,
        n_scales: int = 0,
    ):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(n_features, d_model), nn.LayerNorm(d_model))
        self.position = RelativePositionEncoding(d_model, radius_um)
        self.centre = nn.Parameter(torch.zeros(d_model))  # tells the centre token apart from neighbours
        # one learned embedding per context scale: the tokens of wider windows carry no offset
        self.scale = nn.Parameter(torch.zeros(n_scales, d_model)) if n_scales else None
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, 2 * d_model, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Dropout(dropout), nn.Linear(d_model, n_niches))

    def forward(
        self, x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.project(x) + self.position(offsets)
        h = torch.cat([h[:, :1] + self.centre, h[:, 1:]], dim=1)
        if self.scale is not None:
            h = torch.cat([h, self.project(context) + self.scale], dim=1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], self.scale.shape[0])], dim=1)
        h = self.encoder(h, src_key_padding_mask=~mask)
        return self.head(h[:, 0])


class MLPStudent(nn.Module):
    """MLP on ``[own, neighbourhood mean]`` features."""

    def __init__(self, n_features: int, n_niches: int, hidden: int, dropout: float, n_scales: int = 0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear((2 + n_scales) * n_features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_niches),
        )

    def forward(
        self, x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        w = mask.to(x.dtype)[..., None]
        mean = (x * w).sum(1) / w.sum(1).clamp_min(1.0)
        parts = [x[:, 0], mean] if context is None else [x[:, 0], mean, context.flatten(1)]
        return self.net(torch.cat(parts, dim=1))


class Ensemble(nn.Module):
    """Members trained from different seeds; the log of their mean probabilities (a calibrated average)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x, offsets, mask, context=None) -> torch.Tensor:
        proba = torch.stack([torch.softmax(m(x, offsets, mask, context), dim=1) for m in self.members]).mean(
            0
        )
        return torch.log(proba.clamp_min(1e-12))
