"""L-CoIns (paper 001, section 3): instance-aware language colorization with a grouping transformer.

Three stages with the signatures of ``langcolor.client.spec.stage_specs``; the tensors between
stages are image tokens, ``feature_shape = (P, D)``:

    Encoder(L[B,1,S,S] f32, CIE L in [0,100])      -> FEATURES[B,P,D]   (gray x3, patches, ViT)
    Fusion(FEATURES[B,P,D], TOKENS[B,T] int64)       -> MODULATED[B,P,D]  (language encoder, group
                                                        tokens, modal-type embeddings, L grouping blocks)
    Decoder(MODULATED[B,P,D])                        -> AB[B,2,S,S] f32   (reshape, transposed convs)

The grouping layer (straight-through hard assignment, eqs. 11-12) and the counter-colour heads
(eqs. 14-15) exist for the training loss only; they are not part of any stage.

Departures from the paper, each for serving or for a model trained from scratch on a CPU:
- the language encoder is a small BERT-style transformer trained from scratch over our own
  WordPiece vocabulary (the paper starts from BERT's pretrained 30k dictionary);
- padding is masked everywhere: as keys in the language self-attention (inner loop) and in the
  group tokens' cross-attention to language (outer loop); padded language tokens are zeroed, so
  their embedding never reaches a real token. An all-padding caption (the caption-free baseline)
  closes the language -> group path entirely;
- one query/key/value projection per block is shared by the three token kinds; the modal-type
  embeddings (eq. 3) tell them apart. Each kind has its own LayerNorm + MLP (eq. 5 per kind);
- the fusion stage has no additive biases, its modal-type embeddings are fixed random vectors, the
  word embeddings pass a LayerNorm (as in BERT) and the group tokens start at unit scale: trained
  from scratch, the network otherwise collapsed a caption's tokens (and the group tokens) into one
  vector while on the caption-blind plateau (figures in ``_init``);
- the grouping blocks use cosine attention with a learnt, capped per-head scale instead of scaled
  dot products: the groups' attention over the words otherwise saturated on one word ("background")
  and stopped learning (figures in ``GroupingBlock``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from langcolor.client.lab import AB_SCALE, L_CENTER, L_SCALE
from langcolor.client.spec import PAD_ID, ModelGeometry

from langcolor.export.layers import upsampling_body

from .config import LCoInsConfig

_MASKED_LOGIT = -1.0e4  # finite "minus infinity": an all-masked row stays finite in softmax
_EPS = 1.0e-6
_INIT_LOGIT_SCALE, _MAX_LOGIT_SCALE = 10.0, 100.0  # cosine attention in the grouping blocks (see GroupingBlock)
IMG, LAG, GRP = 0, 1, 2  # modal types (eq. 3)
KINDS = ("img", "lag", "grp")  # the same order


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    B, N, D = x.shape
    return x.reshape(B, N, heads, D // heads).transpose(1, 2)  # [B,H,N,dh]


def _merge(x: torch.Tensor) -> torch.Tensor:
    B, H, N, dh = x.shape
    return x.transpose(1, 2).reshape(B, N, H * dh)  # [B,N,D]


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention weights per head: q [B,H,Nq,dh], k [B,H,Nk,dh], key_mask bool [B,Nk] -> [B,H,Nq,Nk].

    Without ``log_scale``: scaled dot product. With it ([H,1,1], learnt): cosine attention, logits =
    cos(q, k) * exp(log_scale), the scale capped at ``_MAX_LOGIT_SCALE`` (as in Swin V2)."""
    if log_scale is None:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B,H,Nq,Nk]
    else:
        cos = nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(k, dim=-1).transpose(-2, -1)
        scores = cos * log_scale.clamp(max=math.log(_MAX_LOGIT_SCALE)).exp()  # [B,H,Nq,Nk]
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], _MASKED_LOGIT)
    return torch.softmax(scores, dim=-1)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention per head: q [B,H,Nq,dh], k/v [B,H,Nk,dh], key_mask bool [B,Nk] -> [B,H,Nq,dh]."""
    return attention_weights(q, k, key_mask, log_scale) @ v  # [B,H,Nq,dh]


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: int, bias: bool = True) -> None:
        super().__init__(nn.Linear(dim, dim * ratio, bias=bias), nn.GELU(), nn.Linear(dim * ratio, dim, bias=bias))


class TransformerBlock(nn.Module):
    """Pre-LN self-attention block (ViT / BERT), with an optional key padding mask; ``bias=False``
    drops every additive bias (linear layers and LayerNorm), see ``_init``."""

    def __init__(self, dim: int, heads: int, ratio: int, bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, bias=bias), nn.LayerNorm(dim, bias=bias)
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.mlp = Mlp(dim, ratio, bias)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # 3 x [B,N,D]
        h = self.heads
        x = x + self.proj(_merge(attend(_heads(q, h), _heads(k, h), _heads(v, h), key_mask)))  # [B,N,D]
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """Image tokens: the gray image repeated to 3 channels, split into patches, a ViT.

    ``hide`` (pretraining only, masked-patch prediction): (bool [B,P], vector [D]) puts the vector in
    place of the embedding of every hidden patch, before the position embedding (SimMIM)."""

    def __init__(self, cfg: LCoInsConfig) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)  # linear patch embedding
        self.pos = nn.Parameter(torch.randn(1, cfg.patches, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.vit_layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, L: torch.Tensor, hide: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = ((L - L_CENTER) / L_SCALE).repeat(1, 3, 1, 1)  # [B,3,S,S] in [-1, 1]
        x = self.patchify(x).flatten(2).transpose(1, 2)  # [B,P,D]
        if hide is not None:
            hidden, vector = hide
            x = torch.where(hidden.unsqueeze(-1), vector.to(x.dtype), x)
        x = x + self.pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # [B,P,D]


class LanguageEncoder(nn.Module):
    """BERT-style: WordPiece embeddings + learnt positions, transformer blocks with a padding mask."""

    def __init__(self, cfg: LCoInsConfig, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.dim, padding_idx=PAD_ID)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_tokens, cfg.dim) * 0.02)
        self.embed_norm = nn.LayerNorm(cfg.dim, bias=False)  # BERT's embedding LayerNorm: words enter at unit scale
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, bias=False) for _ in range(cfg.text_layers))
        self.norm = nn.LayerNorm(cfg.dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = tokens != PAD_ID  # [B,T]
        return self.contextual(self.embed(tokens) + self.pos, mask), mask  # [B,T,D], [B,T]

    def contextual(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Word embeddings (+ positions) [B,N,D], mask bool [B,N] -> contextual tokens [B,N,D], padding zero.
        Masked-word pretraining enters here with its own inputs (hidden words, a second caption)."""
        keep = mask.unsqueeze(-1).float()  # [B,N,1]
        x = self.embed_norm(embedded) * keep  # [B,N,D]
        for block in self.blocks:
            x = block(x, mask) * keep
        return self.norm(x) * keep


class GroupingBlock(nn.Module):
    """Eqs. 4-9: LN -> grouping attention -> residual, LN -> MLP -> residual over [img; lag; grp].

    Inner loop (eq. 6): image tokens attend to image tokens, language tokens to language tokens.
    Outer loop (eqs. 7-8): group tokens attend to each modality; each modality attends to the groups.
    The outer loop runs groups first: eq. 8 reads the groups as eq. 7 just updated them. Computed
    in parallel from the block input (one reading of the paper), a caption could reach the image
    tokens only from the second block on, one hop per block; with the few blocks a CPU-trained
    network affords, that path was too weak to learn (caption ignored after 600 steps).
    Per token kind the two results are concatenated and projected (eq. 9): image and language
    tokens take [inner, outer]; group tokens take [from image, from language].

    Every attention in the block is cosine attention with a learnt per-head scale (Swin V2's
    remedy for saturated attention), not the paper's scaled dot product. With dot products the
    groups' attention over the words saturated early: 98-100% on the word "background", learnt
    first, and the gradient that would move a group to an object's words vanished with the
    softmax's slope. Shipped weights before and after (512-scene evaluation): objects followed
    15.5% -> 27.3%, instances told apart 10.9% -> 18.8% (figures in the model card)."""

    def __init__(self, dim: int, heads: int, ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, bias=False)  # no additive biases anywhere in the block: see _init
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.ModuleDict({k: nn.Linear(2 * dim, dim, bias=False) for k in KINDS})
        # One LayerNorm + MLP per token kind (eq. 5 applied to each kind's rows): with one shared MLP the
        # large constant the image tokens learn to carry was added to every language and group token too,
        # until a caption's tokens were one vector (pairwise cosine 0.999) and attention over them uniform.
        self.norm2 = nn.ModuleDict({k: nn.LayerNorm(dim, bias=False) for k in KINDS})
        self.mlp = nn.ModuleDict({k: Mlp(dim, ratio, bias=False) for k in KINDS})
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(_INIT_LOGIT_SCALE)))  # per head
        # Diagnostics only (never set while exporting): a list receives each forward's attention weights,
        # "grp_lag" [B,H,G,T] (eq. 7, groups over words) and "img_grp" [B,H,P,G] (eq. 8, patches over groups).
        self.trace: list | None = None

    def forward(self, img, lag, grp, mask, has_words):
        h = self.heads
        att = self._attend  # cosine attention with this block's scale
        n_i, n_l = img.shape[1], lag.shape[1]
        z = torch.cat([img, lag, grp], dim=1)  # [B,P+T+G,D]
        q, k, v = (_heads(t, h) for t in self.qkv(self.norm1(z)).chunk(3, dim=-1))  # [B,H,N,dh]
        qi, ql, qg = q[:, :, :n_i], q[:, :, n_i : n_i + n_l], q[:, :, n_i + n_l :]
        ki, kl = k[:, :, :n_i], k[:, :, n_i : n_i + n_l]
        vi, vl = v[:, :, :n_i], v[:, :, n_i : n_i + n_l]
        # Outer loop, first half (eq. 7): the group tokens gather from both modalities.
        grp_img = att(qg, ki, vi)  # [B,H,G,dh]
        grp_lag = att(qg, kl, vl, mask) * has_words.view(-1, 1, 1, 1)  # closed without a caption
        grp = grp + self.proj["grp"](torch.cat([_merge(grp_img), _merge(grp_lag)], -1))  # [B,G,D] eq. 9, 4
        # Second half (eq. 8) reads the updated groups, so the caption reaches the image in this block.
        _, kg, vg = (_heads(t, h) for t in self.qkv(self.norm1(grp)).chunk(3, dim=-1))  # [B,H,G,dh]
        img_in, img_out = att(qi, ki, vi), att(qi, kg, vg)  # [B,H,P,dh] eq. 6, 8
        lag_in, lag_out = att(ql, kl, vl, mask), att(ql, kg, vg)  # [B,H,T,dh]
        keep = mask.unsqueeze(-1).float()  # [B,T,1]
        img = img + self.proj["img"](torch.cat([_merge(img_in), _merge(img_out)], -1))  # [B,P,D] eq. 9, 4
        lag = (lag + self.proj["lag"](torch.cat([_merge(lag_in), _merge(lag_out)], -1))) * keep  # [B,T,D]
        if self.trace is not None:
            scale = self.logit_scale
            self.trace.append({"grp_lag": attention_weights(qg, kl, mask, scale) * has_words.view(-1, 1, 1, 1),
                               "img_grp": attention_weights(qi, kg, None, scale)})
        img, lag, grp = (x + self.mlp[k](self.norm2[k](x)) for k, x in zip(KINDS, (img, lag, grp)))  # eq. 5
        return img, lag * keep, grp

    def _attend(self, q, k, v, key_mask=None):
        return attend(q, k, v, key_mask, self.logit_scale)


class Fusion(nn.Module):
    """Image tokens + caption tokens -> colorized image tokens (language encoder + grouping transformer)."""

    def __init__(self, cfg: LCoInsConfig, vocab_size: int) -> None:
        super().__init__()
        self.language = LanguageEncoder(cfg, vocab_size)
        self.groups = nn.Parameter(torch.randn(1, cfg.group_tokens, cfg.dim))  # T_grp, unit scale: see _init
        self.register_buffer("modal", torch.randn(3, cfg.dim))  # T'_img, T'_lag, T'_grp (eq. 3): fixed, see _init
        self.blocks = nn.ModuleList(GroupingBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.grouping_blocks))
        self.norm = nn.LayerNorm(cfg.dim, bias=False)

    def fuse(self, features: torch.Tensor, tokens: torch.Tensor):
        """-> (MODULATED [B,P,D], Z_img, Z_lag [B,T,D], Z_grp [B,G,D], mask [B,T]) after the last block."""
        lag, mask = self.language(tokens)  # [B,T,D], [B,T]
        has_words = (mask.long().sum(1) > 0).float()  # [B]
        keep = mask.unsqueeze(-1).float()
        img = features + self.modal[IMG]  # [B,P,D]
        lag = (lag + self.modal[LAG]) * keep  # [B,T,D]
        grp = (self.groups + self.modal[GRP]).expand(features.shape[0], -1, -1)  # [B,G,D]
        for block in self.blocks:
            img, lag, grp = block(img, lag, grp, mask, has_words)
        return self.norm(img), img, lag, grp, mask

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.fuse(features, tokens)[0]


class Decoder(nn.Module):
    """Eq. 10: image tokens reshaped to the patch grid, stride-2 transposed convolutions to S x S."""

    def __init__(self, cfg: LCoInsConfig) -> None:
        super().__init__()
        self.dim, self.grid = cfg.dim, cfg.grid
        self.body, c_out = upsampling_body(cfg.dim, cfg.dec_channels)
        self.head = nn.Conv2d(c_out, 2, 3, padding=1)

    def forward(self, modulated: torch.Tensor) -> torch.Tensor:
        x = modulated.transpose(1, 2).reshape(-1, self.dim, self.grid, self.grid)  # [B,D,g,g]
        return torch.tanh(self.head(self.body(x))) * AB_SCALE  # [B,2,S,S]


class GroupingLayer(nn.Module):
    """Eqs. 11-12: each image token goes to its most similar group token (straight-through), and each
    group token adds the weighted mean of its image tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, img: torch.Tensor, grp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.q(grp) @ self.k(img).transpose(1, 2) / math.sqrt(img.shape[-1])  # A-bar logits [B,G,P]
        soft = torch.softmax(logits, dim=1)  # over groups, per image token
        hard = torch.zeros_like(soft).scatter_(1, soft.argmax(1, keepdim=True), 1.0)  # one group per column
        assign = hard + soft - soft.detach()  # eq. 11, straight-through
        merged = assign @ self.v(img) / (assign.sum(-1, keepdim=True) + _EPS)  # [B,G,D]
        return grp + merged, hard  # eq. 12


class CounterColour(nn.Module):
    """Eqs. 14-15: language and group tokens in a shared space; sim = sigmoid(mean cosine)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lag, self.grp = nn.Linear(dim, dim), nn.Linear(dim, dim)

    @staticmethod
    def similarity(r_lag: torch.Tensor, mask: torch.Tensor, r_grp: torch.Tensor) -> torch.Tensor:
        cos = nn.functional.normalize(r_lag, dim=-1) @ nn.functional.normalize(r_grp, dim=-1).transpose(1, 2)  # [B,T,G]
        keep = mask.float().unsqueeze(-1)  # padding tokens are not part of the description
        mean = (cos * keep).sum((1, 2)) / (keep.sum((1, 2)) * r_grp.shape[1]).clamp(min=1.0)  # [B]
        return torch.sigmoid(mean)

    def loss(self, real: tuple, pseudo: tuple) -> torch.Tensor:
        """L_ctr (eq. 15, to be maximised): real/pseudo = (Z_lag, mask, Z-bar_grp) of each caption."""
        r_l, m, r_g = self.lag(real[0]), real[1], self.grp(real[2])
        p_l, pm, p_g = self.lag(pseudo[0]), pseudo[1], self.grp(pseudo[2])
        sim = self.similarity
        first = torch.log(sim(r_l, m, r_g) * (1 - sim(p_l, pm, r_g)) + _EPS)
        second = torch.log(sim(p_l, pm, p_g) * (1 - sim(r_l, m, p_g)) + _EPS)
        return (first + second).mean()


class Reader(nn.Module):
    """One attention hop with one head and no MLP, over two captions the language encoder read one by
    one (masked-word pretraining): what a hidden word learns from the other caption has to come from
    one token there, found by a linear key, as a group token finds a word in the grouping blocks."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (f(h).unsqueeze(1) for f in (self.q, self.k, self.v))  # [B,1,N,D]
        return h + (attention_weights(q, k, mask) @ v).squeeze(1)  # [B,N,D]


class Pretext(nn.Module):
    """Heads of the pretraining stages (training only, ``pretrain.py``): the reader across two
    captions, BERT's masked-word head with its output tied to the word embeddings, a segment embedding
    and a vector for hidden words; a hidden-patch vector and a linear head predicting a hidden
    patch's gray pixels."""

    def __init__(self, cfg: LCoInsConfig, vocab_size: int) -> None:
        super().__init__()
        self.reader = Reader(cfg.dim)
        self.word_head = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim))
        self.word_bias = nn.Parameter(torch.zeros(vocab_size))
        self.segment = nn.Parameter(torch.randn(2, cfg.dim) * 0.02)  # BERT's sentence A / B embeddings
        self.hidden_word = nn.Parameter(torch.randn(cfg.dim) * 0.02)  # stands in for a [MASK] id
        self.hidden_patch = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.patch_head = nn.Linear(cfg.dim, cfg.patch_size**2)


class LCoIns(nn.Module):
    def __init__(self, cfg: LCoInsConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = int(vocab_size)
        self.encoder = Encoder(cfg)
        self.fusion = Fusion(cfg, vocab_size)
        self.decoder = Decoder(cfg)
        self.grouping = GroupingLayer(cfg.dim)  # training only
        self.counter = CounterColour(cfg.dim)  # training only
        self.apply(_init)
        # Made last, so the other modules draw the same initial weights as before these heads existed.
        self.pretext = Pretext(cfg, vocab_size)  # pretraining only
        self.pretext.apply(_init)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Weights saved before the pretraining heads existed load with fresh heads (nothing served uses them)."""
        own = self.state_dict()
        missing = {k: v for k, v in own.items() if k.startswith("pretext.") and k not in state_dict}
        return super().load_state_dict({**state_dict, **missing}, strict=strict, assign=assign)

    def forward_train(self, L: torch.Tensor, tokens: torch.Tensor, pair_halves: bool = False):
        """-> (ab [B,2,S,S], L_ctr scalar or None, hard assignment [B,G,P]).

        With ``pair_halves`` the batch is [real; pseudo]: the same images twice, the second half's
        captions with other colour words, and L_ctr (eq. 15) pairs sample i with sample i + B/2."""
        features = self.encoder(L)  # [B,P,D]
        modulated, img, lag, grp, mask = self.fusion.fuse(features, tokens)
        grp_bar, hard = self.grouping(img, grp)  # [B,G,D]
        ctr = None
        if pair_halves:
            h = L.shape[0] // 2
            assert L.shape[0] == 2 * h, "pair_halves needs an even batch"
            ctr = self.counter.loss((lag[:h], mask[:h], grp_bar[:h]), (lag[h:], mask[h:], grp_bar[h:]))
        return self.decoder(modulated), ctr, hard

    def forward(self, L: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (ab [B,2,S,S] in Lab units, hard group of each image token [B,P] int64)."""
        modulated, img, _, grp, _ = self.fusion.fuse(self.encoder(L), tokens)
        _, hard = self.grouping(img, grp)
        return self.decoder(modulated), hard.argmax(1)

    @property
    def geometry(self):
        return self.cfg.geometry(self.vocab_size)


def _init(module: nn.Module) -> None:
    """Xavier for every projection. BERT's N(0, 0.02) is sized for width 768 (gain 0.02 * sqrt(768) ~ 0.55);
    at width 64 it gives 0.16 per matrix, and the caption reaches an image token only through a product
    of about four such matrices (language -> group -> image): trained from scratch, that network sat on
    the caption-blind constant for 800 steps.

    Two scales matter as much (measured on the first shipped weights, which only learnt the background):
    - word embeddings N(0, 0.02) without BERT's embedding LayerNorm were swamped by the first block's
      output, so the language tokens of a caption were nearly one vector (mean pairwise cosine 0.90 at
      initialisation, 0.98 after training). ``LanguageEncoder.embed_norm`` brings them to 0.23;
    - group tokens N(0, 0.02) were dwarfed by their first update, so the eight groups collapsed into
      one: every group attended to the same words and every image token spread its attention evenly
      over the groups (12-13% each), and an object patch got the same caption signal as the
      background. Group tokens now start at unit scale (``Fusion.groups``), each its own direction;
    - learnt vectors shared by every token of a kind (LayerNorm and linear biases, the modal-type
      embeddings) are what Adam grows first while the network sits on the caption-blind plateau: each
      gets a small gradient of constant sign and moves at the learning rate regardless. Within 1000
      steps they made a caption's tokens one vector again (pairwise cosine 0.96) and LayerNorm then
      shrank what tells the words apart. So the fusion stage (language encoder and grouping blocks)
      has no additive biases and its modal-type embeddings are fixed N(0, 1) vectors (a buffer, saved
      with the weights). With both, training left the plateau within 500 steps instead of ~2500."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def build(cfg: LCoInsConfig, geometry: ModelGeometry) -> LCoIns:
    """A freshly initialised network (torch's current seed decides the weights) for ``geometry``."""
    return LCoIns(cfg, int(geometry.tokens.value_range[1]) + 1)
