"""A small NOLAN-like niche transformer: neighbourhood tokens in, K niche logits out.

Each cell is described by the tokens of its spatial neighbourhood (the cell itself first): every token is a
neighbour's latent plus an encoding of its position relative to the centre cell in microns (scaled by the
neighbourhood radius). A transformer encoder pools the tokens into an embedding, which is scored against K
learnable prototypes. Training is self-supervised and needs no labels: two augmented views of each
neighbourhood (disjoint halves of the neighbours, positions rotated, latent jittered) must predict each
other's balanced cluster assignment, obtained with a few Sinkhorn-Knopp iterations (SwAV-style swapped
prediction), which keeps the K clusters from collapsing into one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._core.neighbors import Neighbourhoods
from .._core.runtime import torch_threads
from ._position import fourier_position_features


@dataclass
class TransformerConfig:
    """Architecture and training settings (kept small so that CPU training takes seconds)."""

    in_dim: int
    n_niches: int
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 1
    max_tokens: int = 16
    n_freqs: int = 6
    temperature: float = 0.1
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 3
    n_steps: int = 300
    batch_size: int = 256
    lr: float = 2e-3
    noise: float = 0.1
    freeze_prototypes_steps: int = 50
    cpu_threads: int | None = 1

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


class NicheTransformer(nn.Module):
    """Neighbourhood tokens ``(batch, tokens, in_dim)`` + offsets ``(batch, tokens, 2)`` -> K logits."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        c = config
        self.token_in = nn.Linear(c.in_dim, c.d_model)
        self.pos_in = nn.Linear(3 + 4 * c.n_freqs, c.d_model)
        self.self_token = nn.Parameter(torch.zeros(c.d_model))  # marks the centre cell
        layer = nn.TransformerEncoderLayer(
            c.d_model, c.n_heads, dim_feedforward=2 * c.d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.Linear(2 * c.d_model, c.d_model), nn.GELU(), nn.Linear(c.d_model, c.d_model)
        )
        self.prototypes = nn.Linear(c.d_model, c.n_niches, bias=False)

    def position_encoding(self, offsets: torch.Tensor) -> torch.Tensor:
        """Fourier features of offsets given in radius units (shared with the student's encoding)."""
        return fourier_position_features(offsets, radius_um=1.0, n_frequencies=self.config.n_freqs)

    def embed(self, tokens: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised neighbourhood embedding; ``mask`` is True where a token exists."""
        h = self.token_in(tokens) + self.pos_in(self.position_encoding(offsets))
        h[:, 0] = h[:, 0] + self.self_token
        h = self.encoder(h, src_key_padding_mask=~mask)
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        z = self.head(torch.cat([h[:, 0], pooled], dim=-1))
        return nn.functional.normalize(z, dim=-1)

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Niche logits (prototype cosine similarity over the temperature)."""
        z = self.embed(tokens, offsets, mask)
        w = nn.functional.normalize(self.prototypes.weight, dim=-1)
        return z @ w.T / self.config.temperature

    def normalise_prototypes(self) -> None:
        """Keep prototypes on the unit sphere (as in SwAV)."""
        with torch.no_grad():
            self.prototypes.weight.copy_(nn.functional.normalize(self.prototypes.weight, dim=-1))


def _cpu_threads(n: int | None, device: str):
    """At most ``n`` torch threads on the CPU (this model is small: more only add overhead), none elsewhere."""
    return torch_threads(n if str(device).startswith("cpu") else None, at_most=True)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float, n_iters: int) -> torch.Tensor:
    """Balanced soft assignment of a batch to K clusters (equal cluster mass, rows sum to 1)."""
    q = torch.exp((scores - scores.max()) / eps).T  # (K, B)
    q /= q.sum()
    k, b = q.shape
    for _ in range(n_iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T


def gather_tokens(
    latent: np.ndarray, xy: np.ndarray, nbrs: Neighbourhoods, rows: np.ndarray, max_tokens: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens, offsets (radius units) and mask of the neighbourhoods of ``rows`` (the nearest first)."""
    idx = nbrs.index[rows, :max_tokens]
    mask = idx >= 0
    safe = np.where(mask, idx, rows[:, None])
    tokens = latent[safe].astype(np.float32)
    offsets = ((xy[safe] - xy[rows][:, None, :]) / nbrs.radius).astype(np.float32)
    tokens[~mask] = 0.0
    offsets[~mask] = 0.0
    return tokens, offsets, mask


def _two_views(tokens, offsets, mask, cfg: TransformerConfig, gen: torch.Generator):
    """Two views sharing only the niche: the neighbours are split at random into two disjoint halves (the
    centre cell joins each view with probability 1/2), positions are rotated/flipped and the latent jittered.

    What both halves have in common is the neighbourhood's make-up, not the identity of any one cell, so
    predicting one view's cluster from the other learns niches rather than cell types.
    """
    b, t = mask.shape
    side = torch.rand(mask.shape, generator=gen) < 0.5
    centre = torch.rand((2, b), generator=gen) < 0.5
    views = []
    for v, part in enumerate((side, ~side)):
        m = mask & part
        m[:, 0] = centre[v]
        m[:, 0] |= m.sum(1) == 0  # never an empty view
        theta = torch.rand(b, generator=gen) * 2 * math.pi
        cos, sin = torch.cos(theta), torch.sin(theta)
        rot = torch.stack([cos, -sin, sin, cos], -1).view(b, 2, 2)
        flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
        off = torch.einsum("btc,bdc->btd", offsets, rot)
        off = off * torch.stack([flip, torch.ones_like(flip)], -1)[:, None, :]
        tok = tokens + cfg.noise * torch.randn(tokens.shape, generator=gen)
        views.append((tok * m[..., None], off * m[..., None], m))
    return views


def train_niche_transformer(
    latent: np.ndarray,
    xy: np.ndarray,
    nbrs: Neighbourhoods,
    config: TransformerConfig,
    *,
    random_state: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[NicheTransformer, list[float]]:
    """Train the transformer self-supervised (swapped prediction of Sinkhorn codes); return it and losses.

    ``latent`` should be standardised (unit scale per dimension): the augmentation noise is relative to it.
    The number of steps is fixed (``config.n_steps``), so training time does not grow with the cell count.
    """
    torch.manual_seed(int(random_state))
    gen = torch.Generator().manual_seed(int(random_state))
    rng = np.random.default_rng(int(random_state))
    model = NicheTransformer(config).to(device)
    model.normalise_prototypes()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.n_steps)
    bs = min(config.batch_size, len(latent))
    model.train()
    with _cpu_threads(config.cpu_threads, device):
        losses = _train_loop(model, opt, sched, latent, xy, nbrs, config, rng, gen, bs, device, progress)
    model.eval()
    return model, losses


def _train_loop(model, opt, sched, latent, xy, nbrs, config, rng, gen, bs, device, progress) -> list[float]:
    n = len(latent)
    losses: list[float] = []
    for step in tqdm(range(config.n_steps), desc="niche transformer", disable=not progress, leave=False):
        rows = rng.choice(n, bs, replace=False)
        tok, off, msk = (
            torch.from_numpy(a) for a in gather_tokens(latent, xy, nbrs, rows, config.max_tokens)
        )
        views = _two_views(tok, off, msk, config, gen)
        logits = [model(*(t.to(device) for t in v)) for v in views]
        codes = [
            sinkhorn(lg.detach() * config.temperature, config.sinkhorn_eps, config.sinkhorn_iters)
            for lg in logits
        ]
        logp = [torch.log_softmax(lg, dim=-1) for lg in logits]
        loss = -0.5 * ((codes[0] * logp[1]).sum(-1).mean() + (codes[1] * logp[0]).sum(-1).mean())
        opt.zero_grad()
        loss.backward()
        if step < config.freeze_prototypes_steps:  # SwAV: let the embedding settle before prototypes move
            model.prototypes.weight.grad = None
        opt.step()
        sched.step()
        model.normalise_prototypes()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def transformer_logits(
    model: NicheTransformer,
    latent: np.ndarray,
    xy: np.ndarray,
    nbrs: Neighbourhoods,
    *,
    device: str = "cpu",
    chunk: int = 8192,
) -> np.ndarray:
    """``(n, K)`` float32 logits for every cell, in chunks (no augmentation)."""
    model.eval()
    out = np.empty((len(latent), model.config.n_niches), dtype=np.float32)
    with _cpu_threads(model.config.cpu_threads, device):
        _logits_loop(model, latent, xy, nbrs, device, chunk, out)
    return out


def _logits_loop(model, latent, xy, nbrs, device, chunk, out) -> None:
    for s in range(0, len(latent), chunk):
        rows = np.arange(s, min(s + chunk, len(latent)))
        tok, off, msk = (
            torch.from_numpy(a).to(device)
            for a in gather_tokens(latent, xy, nbrs, rows, model.config.max_tokens)
        )
        out[rows] = model(tok, off, msk).float().cpu().numpy()
