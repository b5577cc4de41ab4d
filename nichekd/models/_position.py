"""Relative position encoding of neighbours, in microns.

Offsets ``(dx, dy)`` from the centre cell are divided by the neighbourhood radius (so one model serves
sections of any resolution in the same physical units) and expanded into sine/cosine features at
geometrically spaced frequencies, plus the scaled offset and its length. A linear layer maps them to the
token width.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def fourier_position_features(
    offsets_um: torch.Tensor, radius_um: float, n_frequencies: int = 6
) -> torch.Tensor:
    """``(..., 2)`` offsets in microns -> ``(..., 3 + 4 * n_frequencies)`` features.

    Parameters
    ----------
    offsets_um
        Relative positions ``(dx, dy)`` in microns.
    radius_um
        Neighbourhood radius in microns; offsets are expressed in radii.
    n_frequencies
        Number of frequencies, spaced from 1/4 to 4 cycles per radius.

    Returns
    -------
    Features ``[u, |u|, sin(2 pi f u), cos(2 pi f u)]`` with ``u = offset / radius``.

    Examples
    --------
    >>> import torch
    >>> fourier_position_features(torch.zeros(5, 2), radius_um=50.0).shape
    torch.Size([5, 27])
    """
    u = offsets_um / float(radius_um)
    freqs = torch.as_tensor(np.geomspace(0.25, 4.0, n_frequencies), dtype=u.dtype, device=u.device)
    angles = 2 * np.pi * u[..., None] * freqs  # (..., 2, F)
    angles = angles.flatten(-2)
    dist = u.norm(dim=-1, keepdim=True)
    return torch.cat([u, dist, torch.sin(angles), torch.cos(angles)], dim=-1)


class RelativePositionEncoding(nn.Module):
    """Learned projection of Fourier features of micron offsets to ``d_model``.

    Parameters
    ----------
    d_model
        Output width (the token width of the transformer).
    radius_um
        Neighbourhood radius in microns.
    n_frequencies
        Frequencies of the Fourier features.

    Examples
    --------
    >>> import torch
    >>> enc = RelativePositionEncoding(64, radius_um=50.0)
    >>> enc(torch.zeros(8, 17, 2)).shape
    torch.Size([8, 17, 64])
    """

    def __init__(self, d_model: int, radius_um: float, n_frequencies: int = 6):
        super().__init__()
        self.radius_um = float(radius_um)
        self.n_frequencies = int(n_frequencies)
        self.proj = nn.Linear(3 + 4 * self.n_frequencies, d_model)

    def forward(self, offsets_um: torch.Tensor) -> torch.Tensor:
        """Encode ``(..., 2)`` micron offsets as ``(..., d_model)``."""
        return self.proj(fourier_position_features(offsets_um, self.radius_um, self.n_frequencies))
