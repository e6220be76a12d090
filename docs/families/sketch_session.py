"""Draw the picture of a sketch session in docs/families/: the drawing, then the canvas after each
instruction, each under the instruction that made it.

    python docs/families/sketch_session.py --model-repository REPO

REPO holds the sketch family's export (``langcolor export`` of export/weights/sketch_small.pt). The
drawing is a generated one (seed below), written beside the picture so the session can be replayed
with ``langcolor sketch docs/families/sketch_drawing.png -i ... -o OUT.png``.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from langcolor.client.colorizer import Colorizer
from langcolor.export.families.sketch import drawing

HERE = Path(__file__).resolve().parent
SEED, SIZE, WIDTH = 7, 256, 3
STEPS = (
    "the sky is blue and the ground is green",
    "all the trees are green",
    "the left tree is orange",
    "the house is red with brown roof",
    "the car is yellow",
)
CAPTION = 34  # pixels of text above each panel


def scene() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    placed = None
    while placed is None:
        horizon = 38.0
        placed = drawing.place(["tree", "tree", "house", "car"], rng, horizon)
    return drawing.render(placed, horizon, SIZE, WIDTH).rgb()


def panel(rgb: np.ndarray, text: str) -> Image.Image:
    im = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + CAPTION), "white")
    im.paste(Image.fromarray(rgb), (0, CAPTION))
    draw = ImageDraw.Draw(im)
    words, lines = text.split(), [""]
    for w in words:  # wrap to the panel's width
        if draw.textlength(f"{lines[-1]} {w}".strip()) > rgb.shape[1] - 8:
            lines.append(w)
        else:
            lines[-1] = f"{lines[-1]} {w}".strip()
    for i, line in enumerate(lines[:2]):
        draw.text((4, 3 + 14 * i), line, fill="black")
    return im


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", required=True)
    args = p.parse_args()
    rgb = scene()
    Image.fromarray(rgb).save(HERE / "sketch_drawing.png")
    col = Colorizer(model="sketch", model_repository=args.model_repository)
    panels, canvas = [panel(rgb, "the drawing")], None
    for text in STEPS:
        values = {"instruction": text, **({"canvas": canvas} if canvas is not None else {})}
        result = col.colorize(rgb, **values)
        print(text, "->", "; ".join(n.message for n in result.notes))
        buf = io.BytesIO()
        Image.fromarray(result.rgb).save(buf, "PNG")
        canvas = buf.getvalue()
        panels.append(panel(result.rgb, text))
    gap = 6
    out = Image.new("RGB", (len(panels) * (SIZE + gap) - gap, SIZE + CAPTION), "white")
    for i, im in enumerate(panels):
        out.paste(im, (i * (SIZE + gap), 0))
    out.save(HERE / "sketch_session.png", optimize=True)
    print(f"wrote {HERE / 'sketch_session.png'}")


if __name__ == "__main__":
    main()
