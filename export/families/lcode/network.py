"""L-CoDe (AAAI 2022, section 3): image encoder -> language fusion -> colour decoder.

Each stage is one ``nn.Module`` and one ONNX export unit, with the signatures of
``langcolor.client.spec.stage_specs``:

    Encoder(L[B,1,S,S] f32, CIE L in [0,100])             -> FEATURES[B,Dv,H,W]
    Fusion(FEATURES[B,Dv,H,W], TOKENS[B,T] int64, 0 = pad)  -> MODULATED[B,Dv,H,W]
    Decoder(MODULATED[B,Dv,H,W])                            -> AB[B,2,S,S] f32, Lab units

The fusion stage holds the caption encoder (embedding + Bi-LSTM), the OCCM predictor (eq. 1-2), the
attention transfer module (ATM, eq. 3-4) and the soft-gated injection module (SIM, eq. 5-7).

Departures from the paper, each for serving:
- SIM normalises with per-sample statistics over H, W instead of batch statistics (eq. 8), so an
  image's colours never depend on what else shares its batch.
- The Bi-LSTM runs on a fixed-length, right-padded sequence with an explicit mask (no
  ``pack_padded_sequence``, which does not export to ONNX): the backward direction reads each caption
  reversed within its own length, so padding never reaches a real word.
- An all-padding caption (the caption-free baseline) closes the SIM gate: gamma' = 1, beta' = 0.
- Attention scores are scaled by 1/sqrt(Dv), as in scaled dot-product attention, to keep the
  softmax out of saturation at initialisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from langcolor.client.lab import AB_SCALE, L_CENTER, L_SCALE
from langcolor.client.spec import PAD_ID, ModelGeometry

from langcolor.export.layers import count_parameters, upsampling_body, xavier_init

from .config import LCoDeConfig

_MASKED_LOGIT = -1.0e4  # finite "minus infinity": an all-padding row stays finite in softmax
_EPS = 1.0e-5


class Encoder(nn.Module):
    """VGG16-BN layout: blocks of 3x3 conv + BN + ReLU, the first ``pooled_blocks`` end in a max-pool."""

    def __init__(self, cfg: LCoDeConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3  # the grayscale input is repeated to 3 channels, as for a VGG backbone
        for block, (c_out, n_convs) in enumerate(zip(cfg.enc_channels, cfg.enc_convs)):
            for _ in range(n_convs):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            if block < cfg.pooled_blocks:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        x = (L - L_CENTER) / L_SCALE  # [B,1,S,S] in [-1, 1]
        x = x.repeat(1, 3, 1, 1)  # [B,3,S,S]
        return self.body(x)  # [B,Dv,H,W]


def _reverse_within_length(mask: torch.Tensor) -> torch.Tensor:
    """Index that reverses each right-padded row within its length and leaves padding in place."""
    T = mask.shape[1]
    length = mask.long().sum(1, keepdim=True)  # [B,1]
    pos = torch.arange(T, device=mask.device).unsqueeze(0)  # [1,T]
    return torch.where(pos < length, length - 1 - pos, pos)  # [B,T]


class CaptionEncoder(nn.Module):
    """Word embedding + Bi-LSTM -> context-aware word vectors W (D_w = 2 * hidden), zero on padding."""

    def __init__(self, vocab_size: int, word_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.fwd = nn.LSTM(word_dim, hidden, batch_first=True)
        self.bwd = nn.LSTM(word_dim, hidden, batch_first=True)

    def _zero_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Explicit initial state sized from the input, so the ONNX LSTM keeps a dynamic batch axis.
        h0 = x.new_zeros(1, x.shape[0], self.hidden)  # [1,B,H]
        return h0, h0

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = tokens != PAD_ID  # [B,T] bool
        keep = mask.unsqueeze(-1).float()  # [B,T,1]
        x = self.embed(tokens) * keep  # [B,T,E]
        # Forward direction: padding comes after the words, so it cannot reach them.
        state = self._zero_state(x)
        h_f, _ = self.fwd(x, state)  # [B,T,H]
        # Backward direction: reverse each caption within its length, run forward, reverse back.
        rev = _reverse_within_length(mask)  # [B,T]
        x_rev = torch.gather(x, 1, rev.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B,T,E]
        h_b, _ = self.bwd(x_rev, state)  # [B,T,H]
        h_b = torch.gather(h_b, 1, rev.unsqueeze(-1).expand(-1, -1, self.hidden))  # [B,T,H]
        words = torch.cat([h_f, h_b], dim=-1) * keep  # [B,T,Dw]
        return words, mask


class OCCMPredictor(nn.Module):
    """Eq. 1-2: T_ij = sigmoid(H_obj_i^T U H_col_j + H_obj_i^T u); i = noun, j = its colour word."""

    def __init__(self, word_dim: int, space_dim: int) -> None:
        super().__init__()
        self.f_obj = nn.Sequential(nn.Linear(word_dim, space_dim), nn.ReLU())  # Dozat-Manning MLP
        self.f_col = nn.Sequential(nn.Linear(word_dim, space_dim), nn.ReLU())
        self.U = nn.Parameter(torch.empty(space_dim, space_dim))
        self.u = nn.Parameter(torch.zeros(space_dim))
        nn.init.xavier_uniform_(self.U)

    def forward(self, words: torch.Tensor, mask: torch.Tensor):
        h_obj = self.f_obj(words)  # [B,T,Dh]
        h_col = self.f_col(words)  # [B,T,Dh]
        bilinear = h_obj @ self.U @ h_col.transpose(1, 2)  # [B,T,T]
        logits = bilinear + (h_obj @ self.u).unsqueeze(-1)  # [B,T,T]
        pair_mask = (mask.unsqueeze(2) & mask.unsqueeze(1)).float()  # [B,T,T], 0 where i or j is padding
        return logits, pair_mask, h_obj, h_col


class AttentionTransfer(nn.Module):
    """Eq. 3-4: nouns find regions (S = V^T H_obj), the OCCM moves each score to the noun's colour word."""

    def __init__(self, space_dim: int, visual_dim: int, threshold: float) -> None:
        super().__init__()
        self.key = nn.Linear(space_dim, visual_dim)  # object space -> visual space
        self.value = nn.Linear(space_dim, visual_dim)  # colour space -> visual space
        self.threshold = threshold
        self.scale = 1.0 / math.sqrt(visual_dim)

    def forward(self, V, h_obj, h_col, occm, mask):
        B, C, H, W = V.shape
        v = V.flatten(2).transpose(1, 2)  # [B,M,Dv], M = H*W
        key = self.key(h_obj)  # [B,T,Dv]
        value = self.value(h_col)  # [B,T,Dv]
        scores = (v @ key.transpose(1, 2)) * self.scale  # S [B,M,T]
        kept = occm * (occm >= self.threshold).float()  # [B,T,T]
        t_bar = kept / (kept.sum(-1, keepdim=True) + _EPS)  # l1-normalised rows (eq. 4)
        transferred = scores @ t_bar  # S' [B,M,T]
        logits = transferred.masked_fill(~mask.unsqueeze(1), _MASKED_LOGIT)  # [B,M,T]
        attn = torch.softmax(logits, dim=-1)  # [B,M,T]
        cond = attn @ value  # C [B,M,Dv]
        cond = cond.transpose(1, 2).reshape(B, C, H, W)  # [B,Dv,H,W]
        return cond, transferred


class SoftGatedInjection(nn.Module):
    """Eq. 5-7: m = sigmoid(conv1x1(S')), V' = gamma' * (V - mu) / sigma + beta' with per-sample mu, sigma."""

    def __init__(self, max_tokens: int, visual_dim: int) -> None:
        super().__init__()
        self.gate = nn.Conv2d(max_tokens, 1, 1)  # over the T word positions of S'
        self.gamma = nn.Conv2d(visual_dim, visual_dim, 1)
        self.beta = nn.Conv2d(visual_dim, visual_dim, 1)

    def forward(self, V, cond, transferred, mask):
        B, C, H, W = V.shape
        s = transferred.transpose(1, 2).reshape(B, -1, H, W)  # [B,T,H,W]
        has_words = (mask.long().sum(1) > 0).float().view(B, 1, 1, 1)  # [B,1,1,1]
        m = torch.sigmoid(self.gate(s)) * has_words  # [B,1,H,W]; closed without a caption
        gamma = self.gamma(cond) * m + (1.0 - m)  # [B,Dv,H,W]
        beta = self.beta(cond) * m  # [B,Dv,H,W]
        mu = V.mean(dim=(2, 3), keepdim=True)  # [B,Dv,1,1] per sample, not per batch
        var = ((V - mu) ** 2).mean(dim=(2, 3), keepdim=True)  # [B,Dv,1,1]
        return gamma * (V - mu) / torch.sqrt(var + _EPS) + beta  # [B,Dv,H,W]


class Fusion(nn.Module):
    """Visual features + caption tokens -> modulated features (caption encoder, OCCM, ATM, SIM)."""

    def __init__(self, cfg: LCoDeConfig, vocab_size: int) -> None:
        super().__init__()
        self.captions = CaptionEncoder(vocab_size, cfg.word_dim, cfg.lstm_hidden)
        self.occm = OCCMPredictor(2 * cfg.lstm_hidden, cfg.occm_dim)
        self.atm = AttentionTransfer(cfg.occm_dim, cfg.feature_channels, cfg.occm_threshold)
        self.sim = SoftGatedInjection(cfg.max_tokens, cfg.feature_channels)

    def fuse(self, features: torch.Tensor, tokens: torch.Tensor):
        """-> (MODULATED [B,Dv,H,W], OCCM logits [B,T,T], pair mask [B,T,T]); the logits train eq. 10."""
        words, mask = self.captions(tokens)  # [B,T,Dw], [B,T]
        logits, pair_mask, h_obj, h_col = self.occm(words, mask)
        occm = torch.sigmoid(logits) * pair_mask  # [B,T,T]
        cond, transferred = self.atm(features, h_obj, h_col, occm, mask)
        return self.sim(features, cond, transferred, mask), logits, pair_mask

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.fuse(features, tokens)[0]


class Decoder(nn.Module):
    """Stride-2 transposed convolutions back to S x S; tanh * AB_SCALE gives ab in Lab units."""

    def __init__(self, cfg: LCoDeConfig) -> None:
        super().__init__()
        self.body, c_out = upsampling_body(cfg.feature_channels, cfg.dec_channels)
        self.head = nn.Conv2d(c_out, 2, 3, padding=1)

    def forward(self, modulated: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.body(modulated))) * AB_SCALE  # [B,2,S,S]


class LCoDe(nn.Module):
    def __init__(self, cfg: LCoDeConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = int(vocab_size)
        self.encoder = Encoder(cfg)
        self.fusion = Fusion(cfg, vocab_size)
        self.decoder = Decoder(cfg)
        self.apply(xavier_init)

    def forward_train(self, L: torch.Tensor, tokens: torch.Tensor):
        """-> (ab [B,2,S,S], OCCM logits [B,T,T], pair mask [B,T,T])."""
        modulated, logits, pair_mask = self.fusion.fuse(self.encoder(L), tokens)
        return self.decoder(modulated), logits, pair_mask

    def forward(self, L: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (ab [B,2,S,S] in Lab units, OCCM [B,T,T] probabilities, zero on padding)."""
        ab, logits, pair_mask = self.forward_train(L, tokens)
        return ab, torch.sigmoid(logits) * pair_mask

    @property
    def geometry(self):
        return self.cfg.geometry(self.vocab_size)


def build(cfg: LCoDeConfig, geometry: ModelGeometry) -> LCoDe:
    """A freshly initialised network (torch's current seed decides the weights) for ``geometry``."""
    return LCoDe(cfg, int(geometry.tokens.value_range[1]) + 1)
