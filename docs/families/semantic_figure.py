"""Draw the README figure of the automatic family: one gray input, several seeds, per row.

    python docs/families/semantic_figure.py --model-repository REPO \
        [--weights export/weights/semantic_small.pt] [--out docs/families/semantic_samples.png]

REPO is a model repository exported from the weights (``langcolor export --checkpoint WEIGHTS
--output REPO``): the samples go through the product's path (``Colorizer(model="semantic")``,
in-process, ``prepare``, the sampler over the ONNX stages, ``finish`` at full resolution).

- Row 1: the first held-out synthetic scene (``langcolor evaluate``'s test split, seed 0) that holds
  a two-colour shape and a one-colour shape, chosen by that rule, not by looking at the outputs: the
  gray input, its true colours, seeds 0-3, and, for contrast, independent per-pixel sampling from
  f_theta's own mixture with seed 0 (what a sampler without the autoregression does).
- Rows 2-3: bundled scikit-image photos (chosen before looking at outputs), gray, then seeds 0-3.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from langcolor.client.colorizer import Colorizer
from langcolor.client.lab import AB_SCALE, lab_to_srgb8_keeping_l
from langcolor.export.checkpoint import default_weights_path, load_checkpoint
from langcolor.export.families.semantic import data
from langcolor.export.families.semantic.config import BIMODAL, CLASSES
from langcolor.export.families.semantic.sampler import draw, uniforms

PHOTOS = ("astronaut", "chelsea")
SEEDS = (0, 1, 2, 3)
PANEL = 192  # px: the height of every panel
_LABEL_H = 18


def _panel(rgb: np.ndarray, label: str) -> Image.Image:
    img = Image.fromarray(rgb)
    resample = Image.Resampling.NEAREST if img.height < PANEL else Image.Resampling.LANCZOS
    img = img.resize((max(1, round(img.width * PANEL / img.height)), PANEL), resample)
    out = Image.new("RGB", (img.width, PANEL + _LABEL_H), "white")
    out.paste(img, (0, _LABEL_H))
    ImageDraw.Draw(out).text((4, 3), label, fill="black")
    return out


def _grid(rows: list[list[Image.Image]]) -> Image.Image:
    width = max(sum(p.width for p in r) + 6 * (len(r) - 1) for r in rows)
    out = Image.new("RGB", (width, sum(r[0].height for r in rows) + 6 * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        x = 0
        for p in r:
            out.paste(p, (x, y))
            x += p.width + 6
        y += r[0].height + 6
    return out


def _lab_rgb(L: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """L [H,W], ab [2,H,W] -> uint8 [H,W,3]."""
    return lab_to_srgb8_keeping_l(np.concatenate([L[..., None], ab.transpose(1, 2, 0)], -1).astype(np.float32))


def _scene(size: int) -> data.Scene:
    for i in range(1000):
        s = data.make_scene(0, "test", i, size)
        kinds = {CLASSES[o.cls] in BIMODAL for o in s.objects}
        if kinds == {True, False}:
            return s
    raise RuntimeError("no test scene with both kinds of shape")


def _independent(weights: Path, L: np.ndarray, seed: int) -> np.ndarray:
    """ab [2,S,S]: every chroma pixel drawn on its own from f_theta's mixture, upsampled bilinearly."""
    model = load_checkpoint(weights).build_model().eval()
    q, m = model.cfg.chroma_size, model.cfg.mixtures
    with torch.no_grad():
        emb, _ = model.encoder(torch.from_numpy(L[None, None]))
        mix = model.embedding_mixture(emb)[0].numpy().reshape(6 * m, q * q).T  # [Q*Q,6M]
    ab = (draw(mix, uniforms(seed, q * q, m), np.ones(q * q)) * AB_SCALE).T.reshape(2, q, q)
    up = torch.nn.functional.interpolate(torch.from_numpy(ab[None]).float(), size=L.shape, mode="bilinear",
                                         align_corners=False)
    return up[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=default_weights_path("semantic", "small"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("semantic_samples.png"))
    args = parser.parse_args()
    from skimage import data as skdata

    colorizer = Colorizer(model="semantic", model_repository=args.model_repository)
    size = colorizer.geometry.image_size
    scene = _scene(size)
    gray = _lab_rgb(scene.L, np.zeros_like(scene.ab))
    samples = colorizer.colorize_many([(gray, {"seed": str(s)}) for s in SEEDS])
    rows = [[_panel(gray, f"synthetic, gray ({size} px)"), _panel(_lab_rgb(scene.L, scene.ab), "true colours")]
            + [_panel(r.rgb, f"seed {s}") for s, r in zip(SEEDS, samples)]
            + [_panel(_lab_rgb(scene.L, _independent(args.weights, scene.L, SEEDS[0])), "per-pixel, seed 0")]]
    for name in PHOTOS:
        rgb = getattr(skdata, name)()
        photo_gray = np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None], 3, -1)
        samples = colorizer.colorize_many([(photo_gray, {"seed": str(s)}) for s in SEEDS])
        rows.append([_panel(photo_gray, f"{name}, gray")] + [_panel(r.rgb, f"seed {s}") for s, r in zip(SEEDS, samples)])
    # 256 colours (median cut) keep the file a quarter of the size; large smooth areas show some banding.
    _grid(rows).quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
