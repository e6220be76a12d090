"""Pixelated semantic colorization (Zhao, Han, Shao, Snoek; IJCV 2020), cut into three stages.

    encoder  L -> EMB (colour embedding f_theta), SEG_LOGITS (segmentation head h_phi)
             f_theta and h_phi share the lower layers (Tables 1-2): a trunk of gated residual
             blocks down to a quarter of the side, then a dilated stage; h_phi ends in three
             atrous 3x3 convolutions, summed (ASPP).
    fusion   EMB, SEG_LOGITS, SEM_OVERRIDE -> COND
             the semantic map s = softmax(SEG_LOGITS), or SEM_OVERRIDE where that is non-zero, is
             concatenated with EMB (eq. 4; the paper found scale-and-shift conditioning worse) and
             projected to every gated layer's conditioning term at once. None of it depends on the
             chroma canvas, so the sampler computes it once per image, not once per pixel.
    decoder  COND, AB_CANVAS, ROW -> MIX (the mixture of row ROW's pixels)
             g_omega, a conditional gated PixelCNN (van den Oord et al. 2016) over the chroma canvas:
             a vertical stack that sees the rows above and a horizontal stack that sees the pixels
             to the left in the row, so there is no blind spot; every output position depends only
             on canvas positions before it in raster order. It returns a discretised mixture of
             logistics per pixel (``mixture``).

Causality is built from padding and cropping, not from masked kernels: a convolution reads only
padded rows above (or columns to the left), and the first layer's are shifted by one, so the pixel
itself is never read. ``tests/test_semantic.py`` checks it exactly on the trained and exported nets.

f_theta's own mixture head (``emb_head``, for the embedding loss L_emb) is used in training and in
the evaluation's per-pixel baseline; it is not part of the served stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from langcolor.client.lab import AB_SCALE, L_CENTER, L_SCALE
from langcolor.client.spec import ModelGeometry

from . import mixture
from .config import SemanticConfig


class GatedResBlock(nn.Module):
    """The paper's block (after PixelCNN++): two 3x3 convolutions, a skip and a gate, x + a * sigmoid(b)."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.c2 = nn.Conv2d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        with torch.no_grad():  # start near the identity: a deep stack of fresh blocks stays tame
            self.c2.weight.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.c2(F.elu(self.c1(F.elu(x)))).chunk(2, 1)
        return x + a * torch.sigmoid(b)


def semantic_map(seg_logits: torch.Tensor, override: torch.Tensor) -> torch.Tensor:
    """s [B,K,Q,Q]: the override, normalised, where it has any mass; the predicted softmax elsewhere."""
    total = override.sum(1, keepdim=True)  # [B,1,Q,Q]
    return torch.where(total > 0, override / total.clamp(min=1e-6), torch.softmax(seg_logits, 1))


class Encoder(nn.Module):
    """L [B,1,S,S] -> EMB [B,E,S/4,S/4], SEG_LOGITS [B,K,S/4,S/4]."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        c0, c1, c2, c3 = cfg.trunk

        def res(ch: int, dilation: int = 1) -> list[nn.Module]:
            return [GatedResBlock(ch, dilation) for _ in range(cfg.res_blocks)]

        self.shared = nn.Sequential(  # the rows Tables 1 and 2 share
            nn.Conv2d(1, c0, 3, padding=1), *res(c0),
            nn.Conv2d(c0, c1, 3, stride=2, padding=1), *res(c1),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), *res(c2),
            nn.Conv2d(c2, c3, 3, padding=1), *res(c3, 2),
        )
        self.embedding = nn.Sequential(  # f_theta
            nn.Conv2d(c3, c3, 3, padding=1), *res(c3, 4), nn.ELU(), nn.Conv2d(c3, cfg.emb_dim, 3, padding=1),
        )
        self.segmentation = nn.Sequential(nn.Conv2d(c3, c3, 3, padding=1), *res(c3, 2), nn.ELU())  # h_phi
        self.aspp = nn.ModuleList(nn.Conv2d(c3, cfg.num_classes, 3, padding=r, dilation=r) for r in cfg.aspp_rates)

    def forward(self, L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.shared((L - L_CENTER) / L_SCALE)  # [B,c3,S/4,S/4]
        seg = self.segmentation(shared)
        logits = self.aspp[0](seg)
        for conv in self.aspp[1:]:
            logits = logits + conv(seg)  # [B,K,S/4,S/4]
        return self.embedding(shared), logits


class Fusion(nn.Module):
    """EMB, SEG_LOGITS, SEM_OVERRIDE -> COND [B, layers*2*2C, Q, Q]: eq. 4's conditioning, projected once."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.project = nn.Conv2d(cfg.emb_dim + cfg.num_classes, cfg.cond_channels, 1)

    def forward(self, emb: torch.Tensor, seg_logits: torch.Tensor, override: torch.Tensor) -> torch.Tensor:
        s = semantic_map(seg_logits, override)  # [B,K,Q,Q]
        return self.project(torch.cat([emb, s], 1))


def _gate(x: torch.Tensor, channels: int) -> torch.Tensor:
    # The halves by a fixed count, not x.shape: the exported graph then needs no shape arithmetic.
    return torch.tanh(x[:, :channels]) * torch.sigmoid(x[:, channels:])


class Decoder(nn.Module):
    """g_omega, the gated PixelCNN. Two ways to run the same weights:

    - ``full(cond, canvas)`` -> MIX of every pixel [B,6M,Q,Q] (training: teacher forcing, one pass);
    - ``forward(cond, canvas, row)`` -> MIX of one row [B,6M,Q] (the exported stage, one call per
      sampled pixel). Row i's outputs depend on the vertical stack over the ``band`` rows above it
      and on the horizontal stack over row i alone, so this runs the vertical stack on those rows
      and the horizontal stack and the head on row i: the same numbers as ``full`` at row i (the
      tests check it), for about a third of the work.

    COND's channels are every layer's vertical gate term, then every layer's horizontal one.
    """

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        c, k, n = cfg.gen_channels, cfg.first_kernel, cfg.gen_layers
        self.mixtures, self.layers, self.side, self.channels = cfg.mixtures, n, cfg.chroma_size, c
        self.reach = k // 2  # the first layer reads this many rows above / pixels to the left
        self.band = self.reach + (n - 1)  # rows above row i that reach row i's outputs
        self.v_first = nn.Conv2d(2, 2 * c, (self.reach, k))
        self.h_first = nn.Conv2d(2, 2 * c, (1, self.reach))
        self.v_convs = nn.ModuleList(nn.Conv2d(c, 2 * c, (2, 3)) for _ in range(n - 1))  # this row of v and the one above
        self.h_convs = nn.ModuleList(nn.Conv2d(c, 2 * c, (1, 2)) for _ in range(n - 1))  # this pixel of h and the one left
        self.v_to_h = nn.ModuleList(nn.Conv2d(2 * c, 2 * c, 1) for _ in range(n))
        self.h_out = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in range(n))
        self.head = nn.Sequential(nn.ELU(), nn.Conv2d(c, c, 1), nn.ELU(), nn.Conv2d(c, cfg.mix_channels, 1))

    def _stacks(self, v_terms: torch.Tensor, h_terms: torch.Tensor, x: torch.Tensor, rows: int, last: int,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """x [B,2,H,W] (values in [-1, 1]) and v_terms [B,n*2C,H,W]: the ``rows`` = H rows the vertical
        stack runs on; h_terms [B,n*2C,H',W]: the ``last`` = H' of them, where the horizontal stack
        runs. ``valid`` [B,1,H,1] zeroes rows above the canvas, as the zero padding of ``full`` does.
        -> MIX [B,6M,H',W]."""
        c, width = self.channels, self.side
        v_terms = [v_terms[:, 2 * c * i : 2 * c * (i + 1)] for i in range(self.layers)]  # per layer [B,2C,H,W]
        h_terms = [h_terms[:, 2 * c * i : 2 * c * (i + 1)] for i in range(self.layers)]  # per layer [B,2C,H',W]
        tail = lambda t: t[:, :, rows - last :]  # noqa: E731  (the horizontal stack's rows)
        r, half = self.reach, self.v_first.kernel_size[1] // 2
        # First layer: strictly above (rows i-r..i-1) and strictly left (columns j-r..j-1).
        v_pre = self.v_first(F.pad(x, (half, half, r, 0)))[:, :, :rows]  # [B,2C,H,W]
        h_pre = self.h_first(F.pad(tail(x), (r, 0, 0, 0)))[:, :, :, :width]  # [B,2C,H',W]
        v = _gate(v_pre + v_terms[0], c)
        h = self.h_out[0](_gate(h_pre + self.v_to_h[0](tail(v_pre)) + h_terms[0], c))  # [B,C,H',W]
        for i in range(1, self.layers):
            if valid is not None:
                v = v * valid
            # v and h already exclude the current pixel, so these read this row / pixel as well.
            v_pre = self.v_convs[i - 1](F.pad(v, (1, 1, 1, 0)))
            h_pre = self.h_convs[i - 1](F.pad(h, (1, 0, 0, 0)))
            if i + 1 < self.layers:  # the last layer's vertical output feeds nothing
                v = _gate(v_pre + v_terms[i], c)
            h = h + self.h_out[i](_gate(h_pre + self.v_to_h[i](tail(v_pre)) + h_terms[i], c))
        return mixture.bound(self.head(h), self.mixtures)

    def full(self, cond: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        """Every pixel at once: MIX [B,6M,Q,Q] from COND [B,·,Q,Q] and the canvas [B,2,Q,Q] (Lab units)."""
        half = self.layers * 2 * self.channels
        return self._stacks(cond[:, :half], cond[:, half:], canvas / AB_SCALE, self.side, self.side)

    def forward(self, cond: torch.Tensor, canvas: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """One row: MIX [B,6M,Q] of row ``row`` [B,1] (int64) of each image (rows may differ per image)."""
        rows = row - self.band + torch.arange(self.band + 1, dtype=row.dtype)  # [B,K]: the band, ending at the row
        # One-hot row selection [B,1,K,Q] (a row above the canvas selects nothing, so it reads as zeros):
        # a matmul with it copies rows exactly and keeps the graph free of shape arithmetic.
        select = (rows[:, :, None] == torch.arange(self.side, dtype=row.dtype)).to(cond.dtype)[:, None]
        valid = (rows >= 0).to(cond.dtype)[:, None, :, None]  # [B,1,K,1]
        half = self.layers * 2 * self.channels
        band = self.band + 1
        mix = self._stacks(select @ cond[:, :half], select[:, :, band - 1 :] @ cond[:, half:],
                           select @ (canvas / AB_SCALE), band, 1, valid)
        return mix[:, :, 0]  # [B,6M,Q]


class SemanticNet(nn.Module):
    def __init__(self, cfg: SemanticConfig, geometry: ModelGeometry):
        super().__init__()
        self.cfg, self.geometry = cfg, geometry
        self.encoder, self.fusion, self.decoder = Encoder(cfg), Fusion(cfg), Decoder(cfg)
        self.emb_head = nn.Conv2d(cfg.emb_dim, cfg.mix_channels, 1)  # f_theta's own colour distribution (L_emb)

    def embedding_mixture(self, emb: torch.Tensor) -> torch.Tensor:
        """f_theta's per-pixel mixture [B,6M,Q,Q], independent across pixels (no autoregression)."""
        return mixture.bound(self.emb_head(emb), self.cfg.mixtures)

    def forward(self, L: torch.Tensor, override: torch.Tensor, canvas: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced pass (training): the true chroma on the canvas, every pixel at once."""
        emb, seg_logits = self.encoder(L)
        mix = self.decoder.full(self.fusion(emb, seg_logits, override), canvas)
        return {"emb": emb, "seg_logits": seg_logits, "mix": mix, "emb_mix": self.embedding_mixture(emb)}


def build(cfg: SemanticConfig, geometry: ModelGeometry) -> SemanticNet:
    return SemanticNet(cfg, geometry)
