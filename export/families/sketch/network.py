"""Language-based colorization of scene sketches (Zou et al., TOG 2019), shrunk to 64 px.

Three networks, as in the paper, cut into the three served stages:

- **instance matching** (DeepLabv2-RMI): a small dilated CNN on the drawing; its map at S/4 with the
  paper's 8 coordinate channels goes, word by word, through a convolutional multimodal LSTM (RMI)
  fed the word embedding and the text LSTM's state; the last state gives the referring mask R. An
  object is selected when more than half of its ink lies where R > 0.5 (the paper's rule, counted on
  ink because R is trained on ink only).
- **foreground colouring** (FG-MRU-RMI): a U-Net of gated MRU blocks on the selected objects' ink and
  area, with an RMI at its bottleneck, -> RGB.
- **background colouring** (BG-RES-RMI-SEG): a residual encoder-decoder on the whole drawing with the
  objects' area, an RMI at the bottleneck, a colour branch and a sky/ground/foreground segmentation
  branch; which regions the instruction names comes from its text state.

Stages (signatures of ``config.SketchConfig.geometry``):

    Encoder(SKETCH, INST_MASKS) -> MATCH_FEATURES, MATCH_DETAIL, LAYERS
    Fusion(MATCH_FEATURES, MATCH_DETAIL, LAYERS, TOKENS)
        -> FG_FUSED, FG_SKIP2, FG_SKIP1, BG_FUSED, BG_SKIP2, BG_SKIP1, SELECTION, REGION_LOGITS, REF_LOGITS, AREAS
    Decoder(<fusion outputs>, CANVAS, BACKGROUND)
        -> NEW_CANVAS, SELECTED, REGIONS, FG_RGB, BG_RGB, BG_SEG, REFERRED

The decoder composites: the chosen network's colour where it applies (selected objects' paper, or the
named background regions), the previous CANVAS everywhere else, bit for bit, and ink black on top.

Departures, each stated in the model card: the colouring U-Nets' encoders run in the fusion stage,
after selection, so the foreground network sees the selected objects' ink as the paper's does
(which crops and rescales each to 192 px; here it stays in place at S); the matching RMI has a
global max-pooled context term and runs ``extra_steps`` steps after the last word, so "left" can be
resolved against the other objects of a category; R is brought from S/4 to S by a two-step head that
sees the CNN's S/2 map and the ink; no GAN (the paper's adversarial terms are optional here, the
supervised ones carry the faithfulness).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from langcolor.client.spec import PAD_ID, ModelGeometry
from langcolor.export.layers import count_parameters

from .config import SketchConfig
from .words import CATEGORIES

SKY, GROUND, FOREGROUND = 0, 1, 2  # BG_SEG channels
_LEAK = 0.2


def conv3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation)


def coordinates(h: int, w: int) -> torch.Tensor:
    """[1, 8, h, w]: the RMI paper's spatial channels: each cell's x min/centre/max and y min/centre/max
    in [-1, 1], then 1/w and 1/h."""
    xs = torch.arange(w, dtype=torch.float32)
    ys = torch.arange(h, dtype=torch.float32)
    x0, x1 = xs / w * 2 - 1, (xs + 1) / w * 2 - 1
    y0, y1 = ys / h * 2 - 1, (ys + 1) / h * 2 - 1
    planes = [x0, (x0 + x1) / 2, x1]
    out = [p.view(1, w).expand(h, w) for p in planes]
    out += [p.view(h, 1).expand(h, w) for p in (y0, (y0 + y1) / 2, y1)]
    out += [torch.full((h, w), 1.0 / w), torch.full((h, w), 1.0 / h)]
    return torch.stack(out).unsqueeze(0)


class TextEncoder(nn.Module):
    """Word embedding + LSTM over a right-padded instruction (T fixed; no packed sequences, which do
    not export): per word (e_t, h_t), the word mask, and the state at the last real word."""

    def __init__(self, vocab_size: int, word_dim: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(word_dim, hidden, batch_first=True)
        self.hidden = hidden

    def forward(self, tokens: torch.Tensor):
        mask = (tokens != PAD_ID).float()  # [B,T]
        e = self.embed(tokens)  # [B,T,E]
        zeros = e.new_zeros((1, tokens.shape[0], self.hidden))
        h, _ = self.lstm(e, (zeros, zeros))  # [B,T,H]
        ends = mask - torch.cat([mask[:, 1:], mask.new_zeros((mask.shape[0], 1))], 1)  # 1 at the last word
        last = (h * ends.unsqueeze(-1)).sum(1)  # [B,H]
        return e, h, mask, last


class RMI(nn.Module):
    """Recurrent multimodal interaction: an LSTM at every cell of a feature map, fed at step t the map
    (with coordinates), the word embedding e_t and the text state h_t tiled over the map. Padded steps
    leave the state as it was; ``extra`` steps after the last word see a learnt end-of-instruction
    vector. With ``context`` the gates also see the map-wide max of the previous state."""

    def __init__(self, c_map: int, word_dim: int, text_hidden: int, hidden: int, extra: int, context: bool) -> None:
        super().__init__()
        self.hidden, self.extra = hidden, extra
        self.from_map = nn.Conv2d(c_map + 8, 4 * hidden, 1)
        self.from_text = nn.Linear(word_dim + text_hidden, 4 * hidden, bias=False)
        self.from_state = nn.Conv2d(hidden, 4 * hidden, 1, bias=False)
        self.from_context = nn.Linear(hidden, 4 * hidden, bias=False) if context else None
        self.end = nn.Parameter(torch.zeros(word_dim))

    def _step(self, gates_map, word, h, c):
        gates = gates_map + self.from_text(word)[:, :, None, None] + self.from_state(h)  # [B,4M,h,w]
        if self.from_context is not None:
            gates = gates + self.from_context(h.amax(dim=(2, 3)))[:, :, None, None]
        i, f, o, g = gates.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new

    def forward(self, fmap: torch.Tensor, coords: torch.Tensor, text) -> torch.Tensor:
        e, hs, mask, last = text
        b, _, hh, ww = fmap.shape
        gates_map = self.from_map(torch.cat([fmap, coords.expand(b, -1, -1, -1)], 1))  # [B,4M,h,w]
        h = fmap.new_zeros((b, self.hidden, hh, ww))
        c = torch.zeros_like(h)
        for t in range(e.shape[1]):
            h_new, c_new = self._step(gates_map, torch.cat([e[:, t], hs[:, t]], 1), h, c)
            m = mask[:, t, None, None, None]
            h, c = m * h_new + (1 - m) * h, m * c_new + (1 - m) * c
        end = torch.cat([self.end.expand(b, -1), last], 1)
        for _ in range(self.extra):
            h, c = self._step(gates_map, end, h, c)
        return h  # [B,M,h,w]


class MRU(nn.Module):
    """Masked residual unit (SketchyGAN): gates decide how much of the input passes and how much of a
    new response, computed from the features and the drawing resized to their side, replaces it."""

    def __init__(self, c_in: int, c_out: int, c_img: int) -> None:
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.gates = conv3(c_in + c_img, c_in + c_out)
        self.response = conv3(c_in + c_img, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        m, n = torch.sigmoid(self.gates(torch.cat([x, img], 1))).split([self.c_in, self.c_out], 1)
        z = F.leaky_relu(self.response(torch.cat([m * x, img], 1)), _LEAK)
        return (1 - n) * self.skip(x) + n * z


class Residual(nn.Module):
    """A residual block with leaky ReLUs (plain ones let the colour words' signal die in the small
    background network: several colours came out as one)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = conv3(c, c), conv3(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.b(F.leaky_relu(self.a(x), _LEAK)), _LEAK)


def pyramid(img: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``img`` at S, S/2, ... (area averages)."""
    out = [img]
    for _ in range(levels):
        out.append(F.avg_pool2d(out[-1], 2))
    return out


def up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


# --- the three networks' pieces -----------------------------------------------------------------------


class MatchCNN(nn.Module):
    """Sketch features for matching (DeepLab's role): S -> S/2 (detail) -> S/4, then two dilated
    residual convolutions whose reach spans the map."""

    def __init__(self, cfg: SketchConfig) -> None:
        super().__init__()
        m0, m1, m2 = cfg.match_channels
        self.c0, self.c1, self.c2 = conv3(1, m0), conv3(m0, m1, stride=2), conv3(m1, m2, stride=2)
        self.d2, self.d4 = conv3(m2, m2, dilation=2), conv3(m2, m2, dilation=4)

    def forward(self, sketch: torch.Tensor):
        x = F.relu(self.c0(sketch))  # [B,m0,S,S]
        detail = F.relu(self.c1(x))  # [B,m1,S/2,S/2]
        x = F.relu(self.c2(detail))  # [B,m2,S/4,S/4]
        x = F.relu(x + self.d2(x))
        x = F.relu(x + self.d4(x))
        return x, detail


class ReferHead(nn.Module):
    """The referring mask's logits from the last RMI state: S/4 -> S/2 (with the CNN's detail map) -> S
    (with the ink)."""

    def __init__(self, cfg: SketchConfig) -> None:
        super().__init__()
        self.mid = conv3(cfg.match_hidden + cfg.match_channels[1], cfg.head_channels)
        self.out = conv3(cfg.head_channels + 1, 1)

    def forward(self, state: torch.Tensor, detail: torch.Tensor, strokes: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.mid(torch.cat([up(state), detail], 1)))  # [B,Ch,S/2,S/2]
        return self.out(torch.cat([up(x), strokes], 1))  # [B,1,S,S]


class ForegroundEncoder(nn.Module):
    def __init__(self, cfg: SketchConfig) -> None:
        super().__init__()
        c0, c1, c2, c3 = cfg.fg_channels
        self.stem = conv3(2, c0)
        self.m1, self.m2, self.m3 = MRU(c0, c1, 2), MRU(c1, c2, 2), MRU(c2, c3, 2)

    def forward(self, imgs: list[torch.Tensor]):
        x0 = F.leaky_relu(self.stem(imgs[0]), _LEAK)  # [B,c0,S,S]
        x1 = self.m1(F.avg_pool2d(x0, 2), imgs[1])  # [B,c1,S/2,S/2]
        x2 = self.m2(F.avg_pool2d(x1, 2), imgs[2])  # [B,c2,S/4,S/4]
        x3 = self.m3(F.avg_pool2d(x2, 2), imgs[3])  # [B,c3,S/8,S/8]
        return x3, x2, x1


class ForegroundDecoder(nn.Module):
    def __init__(self, cfg: SketchConfig) -> None:
        super().__init__()
        c0, c1, c2, c3 = cfg.fg_channels
        self.in2, self.m2 = nn.Conv2d(c3 + c2, c2, 1), MRU(c2, c2, 2)
        self.in1, self.m1 = nn.Conv2d(c2 + c1, c1, 1), MRU(c1, c1, 2)
        self.last, self.rgb = conv3(c1 + 2, c0), nn.Conv2d(c0, 3, 1)

    def forward(self, fused, skip2, skip1, imgs: list[torch.Tensor]) -> torch.Tensor:
        x = self.m2(self.in2(torch.cat([up(fused), skip2], 1)), imgs[2])  # [B,c2,S/4,S/4]
        x = self.m1(self.in1(torch.cat([up(x), skip1], 1)), imgs[1])  # [B,c1,S/2,S/2]
        x = F.leaky_relu(self.last(torch.cat([up(x), imgs[0]], 1)), _LEAK)  # [B,c0,S,S]
        return torch.sigmoid(self.rgb(x))  # [B,3,S,S] RGB in [0,1]


class BackgroundEncoder(nn.Module):
    def __init__(self, cfg: SketchConfig) -> None:
        super().__init__()
        g0, g1, g2, g3 = cfg.bg_channels
        self.stem = conv3(2, g0)
        self.down = nn.ModuleList([conv3(g0, g1, 2), conv3(g1, g2, 2), conv3(g2, g3, 2)])
        self.res = nn.ModuleList([Residual(g1), Residual(g2), Residual(g3)])

    def forward(self, img: torch.Tensor):
        x = F.leaky_relu(self.stem(img), _LEAK)  # [B,g0,S,S]
        outs = []
        for down, res in zip(self.down, self.res):
            x = res(F.leaky_relu(down(x), _LEAK))
            outs.append(x)
        return outs[2], outs[1], outs[0]  # S/8, S/4, S/2


class BackgroundDecoder(nn.Module):
    """A colour branch (residual upsampling) and a segmentation branch (transposed convolutions)."""

    def __init__(self, cfg: SketchConfig) -> None:
        super().__init__()
        g0, g1, g2, g3 = cfg.bg_channels
        self.c2, self.r2 = conv3(g3 + g2, g2), Residual(g2)
        self.c1, self.r1 = conv3(g2 + g1, g1), Residual(g1)
        self.rgb = conv3(g1 + 2, 3)
        self.s2 = nn.ConvTranspose2d(g3, g2, 4, stride=2, padding=1)
        self.s1 = nn.ConvTranspose2d(g2 + g2, g1, 4, stride=2, padding=1)
        self.seg = conv3(g1 + 2, 3)

    def forward(self, fused, skip2, skip1, img: torch.Tensor):
        x = self.r2(F.leaky_relu(self.c2(torch.cat([up(fused), skip2], 1)), _LEAK))  # [B,g2,S/4,S/4]
        x = self.r1(F.leaky_relu(self.c1(torch.cat([up(x), skip1], 1)), _LEAK))  # [B,g1,S/2,S/2]
        rgb = torch.sigmoid(self.rgb(torch.cat([up(x), img], 1)))  # [B,3,S,S]
        s = F.leaky_relu(self.s2(fused), _LEAK)  # [B,g2,S/4,S/4]
        s = F.leaky_relu(self.s1(torch.cat([s, skip2], 1)), _LEAK)  # [B,g1,S/2,S/2]
        seg = self.seg(torch.cat([up(s), img], 1))  # [B,3,S,S] logits: sky, ground, foreground
        return rgb, seg


def select(ref_logits: torch.Tensor, strokes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[B,1,S,S], [B,1,S,S], [B,K,S,S] -> [B,K] in {0, 1}: more than half of the object's ink is referred."""
    ink = strokes * masks  # [B,K,S,S]
    covered = ((ref_logits > 0).float() * ink).sum((2, 3))  # [B,K]
    total = ink.sum((2, 3))
    return ((covered > 0.5 * total) & (total > 0.5)).float()


def fg_image(strokes: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """What the foreground network sees: the selected objects' ink and their area. [B,2,S,S]"""
    return torch.cat([strokes * area, area], 1)


def bg_image(strokes: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """What the background network sees: all the ink and where the objects are. [B,2,S,S]"""
    return torch.cat([strokes, objects], 1)


# --- the stages -----------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, cfg: SketchConfig) -> None:
        super().__init__()
        self.cnn = MatchCNN(cfg)

    def forward(self, sketch: torch.Tensor, masks: torch.Tensor):
        feats, detail = self.cnn(sketch)
        return feats, detail, torch.cat([sketch, masks], 1)  # LAYERS [B,1+K,S,S]: ink, then objects


class Fusion(nn.Module):
    def __init__(self, cfg: SketchConfig, vocab_size: int) -> None:
        super().__init__()
        E, H = cfg.word_dim, cfg.text_hidden
        self.text_match, self.text_fg, self.text_bg = (TextEncoder(vocab_size, E, H) for _ in range(3))
        self.rmi_match = RMI(cfg.match_channels[2], E, H, cfg.match_hidden, cfg.extra_steps, context=True)
        self.head = ReferHead(cfg)
        self.fg = ForegroundEncoder(cfg)
        self.rmi_fg = RMI(cfg.fg_channels[3], E, H, cfg.fg_channels[3], cfg.extra_steps, context=False)
        self.bg = BackgroundEncoder(cfg)
        self.rmi_bg = RMI(cfg.bg_channels[3], E, H, cfg.bg_channels[3], cfg.extra_steps, context=False)
        self.regions = nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Linear(H, 2))
        s = cfg.image_size
        self.register_buffer("coords_match", coordinates(s // 4, s // 4), persistent=False)
        self.register_buffer("coords_bottleneck", coordinates(s // 8, s // 8), persistent=False)

    def refer(self, feats, detail, strokes, tokens) -> torch.Tensor:
        state = self.rmi_match(feats, self.coords_match, self.text_match(tokens))  # [B,Mh,S/4,S/4]
        return self.head(state, detail, strokes)  # [B,1,S,S]

    def colour_fg(self, strokes, area, tokens):
        imgs = pyramid(fg_image(strokes, area), 3)
        x3, x2, x1 = self.fg(imgs)
        return self.rmi_fg(x3, self.coords_bottleneck, self.text_fg(tokens)), x2, x1

    def colour_bg(self, strokes, objects, tokens):
        x3, x2, x1 = self.bg(bg_image(strokes, objects))
        text = self.text_bg(tokens)
        return self.rmi_bg(x3, self.coords_bottleneck, text), x2, x1, self.regions(text[3])

    def forward(self, feats, detail, layers, tokens):
        strokes, masks = layers[:, :1], layers[:, 1:]
        ref = self.refer(feats, detail, strokes, tokens)
        sel = select(ref, strokes, masks)  # [B,K]
        area = (sel[:, :, None, None] * masks).amax(1, keepdim=True)  # [B,1,S,S]: the selected objects
        objects = masks.amax(1, keepdim=True)  # [B,1,S,S]: every object
        fg_fused, fg2, fg1 = self.colour_fg(strokes, area, tokens)
        bg_fused, bg2, bg1, region_logits = self.colour_bg(strokes, objects, tokens)
        areas = torch.cat([strokes, area, objects], 1)
        return fg_fused, fg2, fg1, bg_fused, bg2, bg1, sel, region_logits, ref, areas


class Decoder(nn.Module):
    def __init__(self, cfg: SketchConfig) -> None:
        super().__init__()
        self.fg = ForegroundDecoder(cfg)
        self.bg = BackgroundDecoder(cfg)

    def forward(self, fg_fused, fg2, fg1, bg_fused, bg2, bg1, sel, region_logits, ref, areas, canvas, background):
        strokes, area, objects = areas[:, 0:1], areas[:, 1:2], areas[:, 2:3]
        fg_rgb = self.fg(fg_fused, fg2, fg1, pyramid(fg_image(strokes, area), 2))
        bg_rgb, seg_logits = self.bg(bg_fused, bg2, bg1, bg_image(strokes, objects))
        seg = torch.softmax(seg_logits, 1)  # [B,3,S,S]
        named = (region_logits > 0).float()  # [B,2]: sky, ground
        sky = (seg[:, SKY:SKY + 1] >= seg[:, GROUND:GROUND + 1]).float()
        paper = 1 - strokes
        bg_area = (1 - objects) * paper * (sky * named[:, 0, None, None, None] + (1 - sky) * named[:, 1, None, None, None])
        r = background.float()[:, :, None, None]  # [B,1,1,1]: 1 routes to the background network
        a = (1 - r) * area * paper + r * bg_area  # [B,1,S,S] in {0,1}: the pixels that change
        colour = (1 - r) * fg_rgb + r * bg_rgb
        new_canvas = (canvas * (1 - a) + colour * a) * paper  # elsewhere the canvas, bit for bit; ink black
        return new_canvas, sel * (1 - background.float()), named * background.float(), fg_rgb, bg_rgb, seg, torch.sigmoid(ref)


class SketchNet(nn.Module):
    def __init__(self, cfg: SketchConfig, geometry: ModelGeometry) -> None:
        super().__init__()
        assert geometry.image_size == cfg.image_size, (geometry.image_size, cfg.image_size)
        self.cfg, self.geometry = cfg, geometry
        self.encoder = Encoder(cfg)
        self.fusion = Fusion(cfg, geometry.vocab_size)
        self.decoder = Decoder(cfg)
        # Training only (in no stage): the category of each ink pixel from the matching features, the
        # role of the paper's DeepLab trained for sketch segmentation before matching.
        self.category_head = nn.Conv2d(cfg.match_channels[2], 1 + len(CATEGORIES), 1)

    def forward(self, sketch, masks, tokens, canvas, background):
        """The three stages chained: every decoder output, NEW_CANVAS first."""
        return self.decoder(*self.fusion(*self.encoder(sketch, masks), tokens), canvas, background)


def build(cfg: SketchConfig, geometry: ModelGeometry) -> SketchNet:
    return SketchNet(cfg, geometry)


__all__ = ["build", "SketchNet", "count_parameters", "select"]
