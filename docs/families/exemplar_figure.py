"""Draw the README figure of the exemplar family: reference, gray input, output and truth, per row.

    python docs/families/exemplar_figure.py [--weights export/weights/exemplar_small.pt] [--out docs/families/exemplar_before_after.jpg]

Each row is one of the held-out evaluation pairs (``langcolor evaluate --model exemplar``, seed 0,
pair 0): a window of a test photo the network never saw, shown gray, and another window of the same
scene as the reference. The output goes through the product's path (the conditioner on the
reference, ``prepare_l``, the network, ``reconstruct`` at full resolution); the last panel is the
photo's own colours, for comparison. The last row colours the first row's photo from a palette.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from langcolor.export.checkpoint import default_weights_path, load_checkpoint
from langcolor.export.families.exemplar.conditioner import PALETTE, REFERENCE, parse_palette, render_palette
from langcolor.export.families.exemplar.evaluation import network_output
from langcolor.export.families.exemplar.pairs import eval_pairs

ROWS = ("astronaut", "coffee")  # bundled test photos (scikit-image), chosen before looking at outputs
PANEL = 256  # px: the height of every panel
PALETTE_TEXT = "#b03a2e,#2e86c1,#f1c40f,#27ae60"
_LABEL_H = 18


def _panel(rgb: np.ndarray, label: str) -> Image.Image:
    img = Image.fromarray(rgb)
    img = img.resize((max(1, round(img.width * PANEL / img.height)), PANEL), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (img.width, PANEL + _LABEL_H), "white")
    out.paste(img, (0, _LABEL_H))
    ImageDraw.Draw(out).text((4, 3), label, fill="black")
    return out


def _row(panels: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (sum(p.width for p in panels) + 6 * (len(panels) - 1), panels[0].height), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=default_weights_path("exemplar"))
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("exemplar_before_after.jpg"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.weights)
    model, cond = ckpt.build_model(), ckpt.conditioner()
    u8 = lambda x: (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
    rows = []
    for name in ROWS:
        pair = eval_pairs("test", per_photo=1, seed=0, only=[name])[0]
        gray = np.repeat(np.asarray(Image.fromarray(u8(pair.target_rgb)).convert("L"))[..., None], 3, 2)
        out = network_output(model, cond, pair.target_rgb, {REFERENCE.name: pair.ref_rgb})
        rows.append(_row([_panel(u8(pair.ref_rgb), "reference"), _panel(gray, "before (gray input)"),
                          _panel(out, "after (exemplar)"), _panel(u8(pair.target_rgb), "true colours")]))
    first = eval_pairs("test", per_photo=1, seed=0, only=[ROWS[0]])[0]
    swatches = render_palette(parse_palette(PALETTE_TEXT), 64)
    from_palette = network_output(model, cond, first.target_rgb, {PALETTE.name: PALETTE_TEXT})
    rows.append(_row([_panel(swatches, f"--{PALETTE.name} {PALETTE_TEXT}"), _panel(from_palette, "after (palette)")]))
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + 8 * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 8
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True, quality=90)  # JPEG: a quarter of the PNG's size
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}) from {args.weights} (sha256 {ckpt.sha256[:12]})")


if __name__ == "__main__":
    main()
