"""Exemplar colorization (Yin et al., ACM MM 2021, "Yes, Attention Is All You Need"), small for a CPU.

Three stages, one ``nn.Module`` and one ONNX export unit each, with the signatures of
``stage_specs(ExemplarConfig.geometry())``:

    Encoder(L, REF_L)                                  -> Q, K, FEAT, SKIP_HALF, SKIP_FULL
    Fusion(Q, K, FEAT, SKIP_HALF, SKIP_FULL, REF_AB)   -> GUIDE_GRID, GUIDE_HALF, GUIDE_FULL, ALPHA
    Decoder(GUIDE_GRID, GUIDE_HALF, GUIDE_FULL, ALPHA) -> AB [B,2,S,S] (Lab units), GATE [B,2,S,S]

- Encoder F is Siamese: the same weights read the target L and the reference L. Six layers plus L,
  each resampled to the G x G grid and concatenated (the paper's hypercolumn), go through one 1x1
  projection and a normalisation to unit length: queries Q from the target, keys K from the reference.
- SCM (eq. 1): softmax over the G*G reference cells of cos(q, k) / tau, values = REF_AB average-pooled
  to G x G. tau is learnt and bounded below, so attention stays sharp without hardening into an
  argmax (which would not train).
- DCM (eq. 2-4): the keys are the identity, so the module is a per-cell classifier over the in-gamut
  ab bins (``ab_bins``) on the last encoder layer. The prior p(v) is the reference's soft ab histogram
  R_H, computed here from REF_AB, so eq. 3 is softmax(logits + log(R_H + eps)); the colour read out
  is the mean of that posterior sharpened by ``db_temperature`` (Zhang et al.'s annealed mean).
- Gate (eq. 5): each module's confidence comes from a small MLP on its own sorted top-k scores
  (cosines for the SCM, posteriors for the DCM: permutation-invariant, so a confidence says "how
  sure", never "which colour"); a channel softmax gives ALPHA = (alpha_ref, alpha_db) per cell.
- The fusion stage places the fused colour c' beside the target's features at every scale the
  decoder works at (GUIDE_*); the decoder upsamples with them to S x S and answers tanh * AB_SCALE,
  and the gate at S x S (GATE, for inspection).

Stage 1 of training runs the same network as an automatic colorizer: no reference, a flat prior,
the fused colour = the DCM's. That is this implementation's reading of the paper's "F and decoder"
stage; it pretrains the encoder, the bin classifier and the decoder.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from langcolor.client.lab import AB_SCALE, L_CENTER, L_SCALE, rgb_to_lab
from langcolor.client.spec import ModelGeometry

from .config import ExemplarConfig

_NORM_EPS = 1e-12  # added to a key's squared norm before the inverse square root
_GAMUT_SAMPLES = 256  # per edge of each face of the RGB cube when finding the reachable ab bins


@functools.lru_cache(maxsize=4)
def ab_bins(grid: float) -> np.ndarray:
    """Centres [Q, 2] (a, b) of the ``grid``-spaced ab cells that some sRGB colour falls in (Q = 262 at 10).

    Zhang et al. use 313 bins from the colours seen in ImageNet; sRGB itself reaches 262 cells of the
    same grid (the other 51 are empty for any 8-bit photo), so the classifier gets no class that can
    never be right. The gamut's projection on the ab plane is the projection of its surface, so the
    six faces of the RGB cube, finely sampled, find every cell. Sorted by (a, b).
    """
    v = np.linspace(0.0, 1.0, _GAMUT_SAMPLES + 1, dtype=np.float32)
    u, w = (x.ravel() for x in np.meshgrid(v, v, indexing="ij"))
    faces = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for value in (0.0, 1.0):
            face = np.empty((u.size, 3), np.float32)
            face[:, axis], face[:, others[0]], face[:, others[1]] = value, u, w
            faces.append(face)
    lab = rgb_to_lab(np.concatenate(faces))  # [6 * (n+1)^2, 3]
    cells = np.unique(np.round(lab[:, 1:] / grid).astype(np.int64), axis=0)  # [Q, 2]
    return (cells * grid).astype(np.float32)


def _conv_bn(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _resample(x: torch.Tensor, size: int, from_size: int) -> torch.Tensor:
    """[B, C, from_size, from_size] -> [B, C, size, size]: average pooling down, bilinear up.

    Sizes come from the config as ints, so the exported graph has no shape-dependent branch."""
    if from_size == size:
        return x
    if from_size > size:
        return F.avg_pool2d(x, from_size // size)
    return F.interpolate(x, scale_factor=size // from_size, mode="bilinear", align_corners=False)


class Encoder(nn.Module):
    """Siamese F: target and reference L through the same six layers -> Q, K, FEAT and the target's skips."""

    def __init__(self, cfg: ExemplarConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 1
        for c_out, stride, dil in zip(cfg.enc_channels, cfg.enc_strides, cfg.enc_dilations):
            layers.append(nn.Sequential(*_conv_bn(c_in, c_out, stride), *_conv_bn(c_out, c_out, 1, dil)))
            c_in = c_out
        self.layers = nn.ModuleList(layers)
        self.sizes = [cfg.image_size // math.prod(cfg.enc_strides[: i + 1]) for i in range(len(layers))]
        self.project = nn.Conv2d(cfg.hyper_channels, cfg.key_dim, 1)

    def features(self, L: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """L [B,1,S,S] in [0, 100] -> (the six layer outputs, unit-length hypercolumn keys [B,D,G,G])."""
        x = (L - L_CENTER) / L_SCALE  # [B,1,S,S] in [-1, 1]
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        g, s = self.cfg.grid, self.cfg.image_size
        levels = [_resample(o, g, size) for o, size in zip(outs, self.sizes)]
        hyper = torch.cat(levels + [_resample((L - L_CENTER) / L_SCALE, g, s)], 1)  # [B,Ch,G,G]
        keys = self.project(hyper)  # [B,D,G,G]
        # Unit length along D. Not F.normalize: its exported Expand loses the static dims of Q and K.
        keys = keys * torch.rsqrt(keys.pow(2).sum(1, keepdim=True) + _NORM_EPS)  # [B,D,G,G]
        return outs, keys

    def forward(self, L: torch.Tensor, REF_L: torch.Tensor):
        # Two passes, not one over the concatenated batch: BatchNorm statistics in training and the
        # exported graph's shapes stay per input.
        outs, q = self.features(L)  # Q [B,D,G,G]
        _, k = self.features(REF_L)  # K [B,D,G,G]
        return q, k, outs[-1], outs[1], outs[0]  # Q, K, FEAT [B,C5,G,G], SKIP_HALF [B,C1,S/2,S/2], SKIP_FULL [B,C0,S,S]


class Confidence(nn.Module):
    """w(x) = MLP(the k largest scores of row x, sorted): how decisive a module's choice is."""

    def __init__(self, k: int, hidden: int = 16) -> None:
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Linear(k, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        top = torch.topk(scores, self.k, dim=-1).values  # [B,N,k]
        return self.mlp(top)  # [B,N,1]


class Fusion(nn.Module):
    """SCM + DCM (with the reference-histogram prior) + gate -> the fused colour at every decoder scale, ALPHA."""

    def __init__(self, cfg: ExemplarConfig) -> None:
        super().__init__()
        self.cfg = cfg
        bins = ab_bins(cfg.bin_grid)
        self.classifier = nn.Conv2d(cfg.enc_channels[-1], len(bins), 1)  # q^d against identity keys
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.tau_init)))
        self.conf_ref = Confidence(cfg.top_k)
        self.conf_db = Confidence(cfg.top_k)
        self.register_buffer("bins", torch.from_numpy(bins))  # v^d [Q,2]

    def soft_histogram(self, ab: torch.Tensor) -> torch.Tensor:
        """ab [B,2,S,S] -> R_H [B,Q]: Gaussian soft assignment (sigma = hist_sigma) to the bins, averaged."""
        x = F.avg_pool2d(ab, self.cfg.hist_pool) if self.cfg.hist_pool > 1 else ab
        x = x.flatten(2).transpose(1, 2)  # [B,M,2]
        d2 = (x.unsqueeze(2) - self.bins).pow(2).sum(-1)  # [B,M,Q]
        w = torch.softmax(-d2 / (2 * self.cfg.hist_sigma**2), dim=-1)  # [B,M,Q]
        return w.mean(1)  # [B,Q]

    def scale(self) -> torch.Tensor:
        """1 / tau, the learnt inverse temperature of the SCM's softmax (tau >= tau_min)."""
        return self.log_scale.clamp(max=math.log(1.0 / self.cfg.tau_min)).exp()

    def attend(self, q: torch.Tensor, k: torch.Tensor, ref_ab: torch.Tensor):
        """SCM (eq. 1) -> (c_r [B,N,2], cosines [B,N,N], attention [B,N,N])."""
        values = _resample(ref_ab, self.cfg.grid, self.cfg.image_size).flatten(2).transpose(1, 2)  # v^r [B,N,2]
        sim = q.flatten(2).transpose(1, 2) @ k.flatten(2)  # [B,N,N] cosines
        attn = torch.softmax(sim * self.scale(), dim=-1)  # [B,N,N]
        return attn @ values, sim, attn  # c_r [B,N,2]

    def database(self, feat: torch.Tensor, log_prior: torch.Tensor | None):
        """DCM (eq. 2-4) -> (c_d [B,N,2], read-out posterior [B,N,Q], posterior logits [B,N,Q])."""
        logits = self.classifier(feat).flatten(2).transpose(1, 2)  # [B,N,Q]
        post_logits = logits if log_prior is None else logits + log_prior.unsqueeze(1)
        post = torch.softmax(post_logits / self.cfg.db_temperature, dim=-1)  # [B,N,Q]
        return post @ self.bins, post, post_logits  # c_d [B,N,2]

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """[B,N,2] -> [B,2,G,G] with a constant target shape, so the exported dims stay static."""
        g = self.cfg.grid
        return x.transpose(1, 2).reshape(-1, 2, g, g)

    def guides(self, fused: torch.Tensor, feat, skip_half, skip_full) -> tuple[torch.Tensor, ...]:
        """The fused colour c' [B,2,G,G] (scaled to about [-1, 1]) beside the target's features at G, S/2, S."""
        c, g, s = fused / AB_SCALE, self.cfg.grid, self.cfg.image_size
        return (torch.cat([c, feat], 1),  # GUIDE_GRID [B,2+C5,G,G]
                torch.cat([_resample(c, s // 2, g), skip_half], 1),  # GUIDE_HALF [B,2+C1,S/2,S/2]
                torch.cat([_resample(c, s, g), skip_full], 1))  # GUIDE_FULL [B,2+C0,S,S]

    def run(self, q, k, feat, ref_ab) -> dict[str, torch.Tensor]:
        """Everything training looks at (``forward`` returns the exported tensors)."""
        ref_hist = self.soft_histogram(ref_ab)  # R_H [B,Q]
        c_r, sim, attn = self.attend(q, k, ref_ab)
        c_d, post, post_logits = self.database(feat, torch.log(ref_hist + self.cfg.prior_eps))
        w = torch.cat([self.conf_ref(sim), self.conf_db(post)], -1)  # [B,N,2]
        alpha = torch.softmax(w, dim=-1)  # [B,N,2]
        fused = alpha[..., :1] * c_r + alpha[..., 1:] * c_d  # c' [B,N,2]
        return {"fused": self._grid(fused), "gate": self._grid(alpha), "c_ref": self._grid(c_r),
                "c_db": self._grid(c_d), "ref_hist": ref_hist, "db_logits": post_logits, "attn": attn}

    def automatic(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 1: no reference, a flat prior; the fused colour is the DCM's."""
        c_d, _, logits = self.database(feat, None)
        return {"fused": self._grid(c_d), "db_logits": logits}

    def forward(self, Q, K, FEAT, SKIP_HALF, SKIP_FULL, REF_AB):
        out = self.run(Q, K, FEAT, REF_AB)
        return (*self.guides(out["fused"], FEAT, SKIP_HALF, SKIP_FULL), out["gate"])


class Decoder(nn.Module):
    """The guides -> AB [B,2,S,S]: upsampling x2 with the fused colour and the target's skips at each scale."""

    def __init__(self, cfg: ExemplarConfig) -> None:
        super().__init__()
        assert cfg.upsamplings == 2, "the guides exist at G, S/2 and S"
        self.cfg = cfg
        c, d = cfg.enc_channels, cfg.dec_channels
        self.inp = nn.Sequential(*_conv_bn(2 + c[-1], d[0]), *_conv_bn(d[0], d[0]))
        guide_c = (2 + c[1], 2 + c[0])  # GUIDE_HALF, GUIDE_FULL
        self.blocks = nn.ModuleList(nn.Sequential(*_conv_bn(d_in + gc, d_out), *_conv_bn(d_out, d_out))
                                    for d_in, d_out, gc in zip(d[:-1], d[1:], guide_c))
        self.head = nn.Conv2d(d[-1], 2, 3, padding=1)

    def forward(self, GUIDE_GRID, GUIDE_HALF, GUIDE_FULL, ALPHA):
        x = self.inp(GUIDE_GRID)  # [B,d0,G,G]
        for block, guide in zip(self.blocks, (GUIDE_HALF, GUIDE_FULL)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # [B,d,2h,2h]
            x = block(torch.cat([x, guide], 1))  # [B,d',2h,2h]
        ab = torch.tanh(self.head(x)) * AB_SCALE  # [B,2,S,S]
        gate = F.interpolate(ALPHA, scale_factor=self.cfg.image_size // self.cfg.grid, mode="nearest")  # [B,2,S,S]
        return ab, gate


class Exemplar(nn.Module):
    def __init__(self, cfg: ExemplarConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.fusion = Fusion(cfg)
        self.decoder = Decoder(cfg)

    @property
    def geometry(self) -> ModelGeometry:
        return self.cfg.geometry()

    def forward_train(self, L, REF_L=None, REF_AB=None) -> dict[str, torch.Tensor]:
        """Stage 1 (no reference) or stage 2 -> AB ``ab`` and the intermediate tensors the losses read."""
        if REF_L is None:
            outs, _ = self.encoder.features(L)
            feat, skip_half, skip_full = outs[-1], outs[1], outs[0]
            out = self.fusion.automatic(feat)
            out["gate"] = None
        else:
            q, k, feat, skip_half, skip_full = self.encoder(L, REF_L)
            out = self.fusion.run(q, k, feat, REF_AB)
        out["ab"], _ = self.decoder(*self.fusion.guides(out["fused"], feat, skip_half, skip_full),
                                    out["fused"] if out["gate"] is None else out["gate"])
        return out

    def forward(self, L, REF_L, REF_AB) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (AB [B,2,S,S] in Lab units, GATE [B,2,S,S]): the three stages chained, as served."""
        return self.decoder(*self.fusion(*self.encoder(L, REF_L), REF_AB))

    def stages(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "fusion": self.fusion, "decoder": self.decoder}


def build(cfg: ExemplarConfig, geometry: ModelGeometry) -> Exemplar:
    """A freshly initialised network (torch's current seed decides the weights) for ``geometry``."""
    model = Exemplar(cfg)
    assert model.geometry == geometry, "the geometry is the config's own"
    return model
