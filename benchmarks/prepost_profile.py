"""Profile the client's own work on one photo per size: load, prepare, reconstruct, encode, and the
whole ``langcolor colorize`` command, with a warm-up and the median of N repeats.

    .venv/bin/python -m langcolor.benchmarks.prepost_profile --output /tmp/prepost.json [--model FAMILY]

Photos are scikit-image's ``astronaut`` resized (bicubic) to 0.3, 3 and 12 megapixels and saved as
JPEG quality 90; ab comes from the shipped model of ``--model`` (default: the default family) for a
real user input (a caption for a text input, a photograph for an image input), so the share of
out-of-gamut colours is the product's, not a random field's. The command-line run is a fresh process each time
(model load included, as a user sees it); its peak resident memory comes from ``os.wait4``.
Separate from ``bench.py`` on purpose: this is the client performance engineer's before/after tool.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OLD_ENV = "LANGCOLOR_PROFILE_MODULES"  # a folder of older client modules to time instead


def _use_modules_from(folder: str) -> None:
    """Load ``lab``, ``imageio``, ``reconstruct`` of ``langcolor.client`` from ``folder`` (copies of an
    earlier revision), before anything imports them: the "before" column of a before/after table."""
    import importlib.util

    import langcolor.client

    for name in ("errors", "lab", "imageio", "reconstruct", "photo", "colorizer", "colorize_cmd"):
        path = Path(folder) / f"{name}.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location(f"langcolor.client.{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            setattr(langcolor.client, name, module)


if os.environ.get(OLD_ENV):
    _use_modules_from(os.environ[OLD_ENV])

from langcolor.client import families  # noqa: E402
from langcolor.client.colorizer import Colorizer  # noqa: E402
from langcolor.client.imageio import encode_image, load_image  # noqa: E402
from langcolor.client.reconstruct import prepare_l, reconstruct  # noqa: E402

SIZES = {"0.3MP": (640, 480), "3MP": (2000, 1500), "12MP": (4000, 3000)}
REPEATS = {"0.3MP": 7, "3MP": 5, "12MP": 3}
CAPTION = "a red car on green grass under a blue sky"


def photo_jpeg(width: int, height: int) -> bytes:
    from PIL import Image
    from skimage import data as skdata

    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).resize((width, height), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def user_inputs(family: str, folder: Path) -> tuple[dict, list[str]]:
    """The family's user inputs for the profile -> (``Colorizer`` keywords, ``langcolor colorize`` flags):
    ``CAPTION`` for a text input, scikit-image's ``coffee`` photo (saved in ``folder``) for an image input."""
    values, flags = {}, []
    for f in families.get(family).inputs:
        if f.kind == families.TEXT:
            values[f.name] = CAPTION
            flags += [f.flags[0], CAPTION]
        else:
            from PIL import Image
            from skimage import data as skdata

            path = Path(folder) / f"{f.name}.jpg"
            Image.fromarray(skdata.coffee()).save(path, "JPEG", quality=90)
            values[f.name] = path.read_bytes()
            flags += [f.flags[0], str(path)]
    return values, flags


def cli_run(photo: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """-> (wall seconds, peak RSS MB) of one fresh ``langcolor colorize`` process.

    The peak comes from GNU time, which forks the command from its own small process: a child
    spawned straight from this one would report this process's resident size (Linux keeps the
    pre-exec high-water mark in ru_maxrss), which here is hundreds of MB of test images.
    """
    # The same as the ``langcolor`` console script, but through this module so OLD_ENV applies.
    code = "import sys; import langcolor.benchmarks.prepost_profile; from langcolor.client.cli import main; sys.exit(main())"
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        cmd = ["/usr/bin/time", "-f", "%M", "-o", rss.name, sys.executable, "-c", code,
               "colorize", str(photo), "-o", str(out), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode())
        return wall, int(rss.read().split()[-1]) / 1024  # KiB -> MiB


def png_levels(levels=(1, 3, 6, 9), repeats: int = 3) -> list[dict]:
    """PNG encode time and size per zlib level on scikit-image's photos and a 12 MP upscale."""
    from PIL import Image
    from skimage import data as skdata

    photos = {name: getattr(skdata, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    photos["astronaut_12MP"] = np.asarray(Image.fromarray(photos["astronaut"]).resize((4000, 3000), Image.Resampling.BICUBIC))
    rows = []
    for name, rgb in photos.items():
        for level in levels:
            t = median_s(lambda: encode_image(rgb, "PNG", png_compression=level), repeats)
            row = {"photo": name, "pixels": rgb.shape[0] * rgb.shape[1], "level": level, "seconds": t,
                   "bytes": len(encode_image(rgb, "PNG", png_compression=level))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--cli-repeats", type=int, default=3)
    p.add_argument("--label", default="")
    p.add_argument("--model", default=families.DEFAULT_FAMILY, choices=families.names(), help="model family")
    p.add_argument("--png-levels", action="store_true", help="only time PNG zlib levels 1, 3, 6, 9 on real photos")
    args = p.parse_args()
    if args.png_levels:
        rows = png_levels()
        if args.output:
            args.output.write_text(json.dumps({"png_levels": rows}, indent=1))
        return
    col = Colorizer(model=args.model)
    geometry = col.geometry
    s = geometry.image_size
    has_level = "png_compression" in inspect.signature(encode_image).parameters
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        values, flags = user_inputs(args.model, Path(tmp))
        conditions = {k: v[None] for k, v in col.condition(values).tensors.items()}  # each [1, ...]
        flags += ["--model", args.model]
        for name in args.sizes:
            w, h = SIZES[name]
            jpeg = photo_jpeg(w, h)
            photo = Path(tmp) / f"{name}.jpg"
            photo.write_bytes(jpeg)
            n = REPEATS[name]
            loaded = load_image(jpeg)
            l_full, l_small = prepare_l(loaded.rgb, s)  # [H, W], [1, S, S]
            ab = col.infer({geometry.image.name: l_small[None], **conditions})[geometry.request_outputs[0].name][0]  # [2, S, S]
            rgb = reconstruct(l_full, ab)  # [H, W, 3] uint8
            row = {"size": name, "pixels": w * h}
            row["load_s"] = median_s(lambda: load_image(jpeg), n)
            row["prepare_s"] = median_s(lambda: prepare_l(loaded.rgb, s), n)
            row["reconstruct_s"] = median_s(lambda: reconstruct(l_full, ab), n)
            row["encode_png_default_s"] = median_s(lambda: encode_image(rgb, "PNG"), n)
            row["png_default_bytes"] = len(encode_image(rgb, "PNG"))
            if has_level:
                for level in (1, 6):
                    row[f"encode_png{level}_s"] = median_s(lambda: encode_image(rgb, "PNG", png_compression=level), n)
                    row[f"png{level}_bytes"] = len(encode_image(rgb, "PNG", png_compression=level))
            row["encode_jpeg_s"] = median_s(lambda: encode_image(rgb, "JPEG"), n)
            row["jpeg_bytes"] = len(encode_image(rgb, "JPEG"))
            walls, peaks = [], []
            cli_run(photo, Path(tmp) / "out.png", flags)  # warm-up (page cache)
            for _ in range(args.cli_repeats):
                wall, peak = cli_run(photo, Path(tmp) / "out.png", flags)
                walls.append(wall)
                peaks.append(peak)
            row["cli_s"] = statistics.median(walls)
            row["cli_peak_mb"] = max(peaks)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"label": args.label, "family": args.model, "cpus": os.cpu_count(), "rows": rows}
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
