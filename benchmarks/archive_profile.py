"""The archive path (`langcolor batch`, in-process) step by step, next to the floor of each step.

    .venv/bin/python -m langcolor.benchmarks.archive_profile --output /tmp/archive.json [--images 96]

Photos: scikit-image's astronaut, coffee, chelsea and rocket and scikit-learn's china and flower,
resized (bicubic) to 640x480 (0.3 MP) and 4000x3000 (12 MP), JPEG quality 90. ab comes from the
shipped default model for a real caption, so the share of out-of-gamut colours is the product's.

Per step, the product's code and the fastest library measured for the same step are timed side by
side (alternating, one warm-up, median of the repeats, one thread each). The floor of the archive
path is the sum of the fastest figure of every step; on N cores it is N / sum images/s, the most a
pipeline could reach with perfect overlap. The library reconstruct (OpenCV Lab -> RGB) clips
out-of-gamut colours per channel, which changes L, so it is a floor the product cannot match while
keeping L; the JSON gives both floors. Then whole runs of ``benchmark_batch`` on copies of the photos,
threads only and with worker processes, alternating, so a loaded machine moves both alike.

The optional libraries (simplejpeg, OpenCV: the bench extra) are measured when installed, skipped
otherwise; the product's reconstruct is the compiled one where numba is installed (the fast extra),
with the numpy path beside it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .report import cpu_model

SIZES = {"0.3MP": (640, 480), "12MP": (4000, 3000)}
REPEATS = {"0.3MP": 9, "12MP": 3}
CAPTION = "a red car on green grass under a blue sky"


def photos() -> dict[str, np.ndarray]:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_image

    return {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea(),
            "rocket": skdata.rocket(), "china": load_sample_image("china.jpg"), "flower": load_sample_image("flower.jpg")}


def jpeg(rgb: np.ndarray, size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def side_by_side(fns: dict, repeats: int) -> dict[str, float]:
    """Median ms of each function, run in turn each repeat after one warm-up of each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _libraries() -> dict:
    found = {}
    for name in ("cv2", "simplejpeg"):
        try:
            found[name] = __import__(name)
        except ImportError:
            pass
    if "cv2" in found:
        found["cv2"].setNumThreads(1)  # one thread per step: the pipeline parallelises across images
    return found


def profile_steps(data: bytes, colorizer, repeats: int) -> dict:
    from PIL import Image

    from langcolor.client.imageio import encode_image, load_image
    from langcolor.client.lab import rgb8_to_l, rgb_to_l
    from langcolor.client.reconstruct import reconstruct, resize_plane
    from langcolor.client.colorizer import stack_feeds

    lib = _libraries()
    cv2, simplejpeg = lib.get("cv2"), lib.get("simplejpeg")
    geom = colorizer.geometry
    s = geom.image_size
    inputs = {"caption": CAPTION}
    prepared = colorizer.prepare(data, inputs)
    feeds = {**colorizer.family.image_codec.feeds(prepared, geom), **colorizer.condition(inputs).tensors}
    batch = stack_feeds(geom, [feeds] * 8)
    ab = colorizer.infer(batch)["AB"][0]  # [2, S, S]
    u8 = load_image(data).pixels  # [H, W, 3] uint8
    f32 = u8 / np.float32(255.0)
    l_full = prepared.l_full
    h, w = l_full.shape
    rgb = reconstruct(l_full, ab)
    steps: dict[str, dict[str, float]] = {}

    decode = {"product": lambda: load_image(data), "PIL": lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))}
    if simplejpeg:
        decode["simplejpeg"] = lambda: simplejpeg.decode_jpeg(data)
    if cv2:
        decode["opencv"] = lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    steps["decode"] = side_by_side(decode, repeats)

    lab = {"product": lambda: rgb8_to_l(u8), "float path (before)": lambda: rgb_to_l(u8 / np.float32(255.0))}
    if cv2:
        lab["opencv float Lab (input already float)"] = lambda: cv2.cvtColor(f32, cv2.COLOR_RGB2Lab)
    steps["L"] = side_by_side(lab, repeats)

    resize = {"product": lambda: resize_plane(l_full, s, s)}
    if cv2:
        resize["opencv INTER_AREA"] = lambda: cv2.resize(l_full, (s, s), interpolation=cv2.INTER_AREA)
    steps["resize L"] = side_by_side(resize, repeats)

    steps["inference, per image at batch 8"] = {
        k: v / 8 for k, v in side_by_side({"product": lambda: colorizer.infer(batch)}, repeats).items()}

    from langcolor.client import lab_fast

    def product_reconstruct(compiled: bool):
        def run() -> np.ndarray:
            lab_fast.READY = compiled
            try:
                return reconstruct(l_full, ab)
            finally:
                lab_fast.READY = compiled_available
        return run

    compiled_available = lab_fast.READY
    rec = {"product": product_reconstruct(compiled_available)}
    if compiled_available:
        rec["product, numpy path (no fast extra)"] = product_reconstruct(False)
    if cv2:
        def cv_clip() -> np.ndarray:  # ab up, L back, Lab -> RGB clipping per channel: not L-exact
            a = cv2.resize(ab[0], (w, h), interpolation=cv2.INTER_LINEAR)
            b = cv2.resize(ab[1], (w, h), interpolation=cv2.INTER_LINEAR)
            out = cv2.cvtColor(cv2.merge([l_full, a, b]), cv2.COLOR_Lab2RGB)
            return cv2.convertScaleAbs(out, alpha=255.0)

        rec["opencv, clipping (L not kept)"] = cv_clip
    steps["reconstruct"] = side_by_side(rec, repeats)

    png = {"product": lambda: encode_image(rgb, "PNG")}
    jpg = {"product": lambda: encode_image(rgb, "JPEG")}
    if cv2:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        png["opencv level 1"] = lambda: cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        jpg["opencv q95 4:4:4"] = lambda: cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95,
                                                                       cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                                       cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    steps["encode PNG level 1"] = side_by_side(png, repeats)
    steps["encode JPEG q95 (alternative output)"] = side_by_side(jpg, repeats)

    png_steps = [k for k in steps if not k.startswith("encode JPEG")]
    product = sum(steps[k]["product"] for k in png_steps)
    floor = sum(min(steps[k].values()) for k in png_steps)
    floor_l_kept = floor - min(steps["reconstruct"].values()) + steps["reconstruct"]["product"]
    return {"steps_ms": steps, "product_sum_ms": product, "floor_sum_ms": floor,
            "floor_sum_l_kept_ms": floor_l_kept, "out_of_gamut_note": "floor_sum_ms uses a clipping reconstruct"}


def run_batches(folder: Path, colorizer, rounds: int, workdir: Path) -> dict:
    from langcolor.client.batch import benchmark_batch

    from langcolor.client import lab_fast

    compiled = lab_fast.READY
    modes = {"2 threads, numpy reconstruct (as before)": (0, False), "2 threads, compiled reconstruct": (0, True),
             "2 worker processes, compiled reconstruct": (2, True)}
    if not compiled:  # no numba: the workers use the numpy path too
        modes = {"2 threads": (0, False), "2 worker processes": (2, False)}
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, (processes, fast) in modes.items():
            saved = os.environ.get(lab_fast.DISABLE_ENV)
            os.environ[lab_fast.DISABLE_ENV] = "0" if fast else "1"  # read by run_batch and by spawned workers
            lab_fast.READY = fast
            try:
                runs[name].append(benchmark_batch(folder, workdir, colorizer, {"caption": CAPTION}, workers=2,
                                                  processes=processes))
            finally:
                lab_fast.READY = compiled
                if saved is None:
                    del os.environ[lab_fast.DISABLE_ENV]
                else:
                    os.environ[lab_fast.DISABLE_ENV] = saved
    return {name: {"images_per_s": [r["pipeline_images_per_s"] for r in rs],
                   "model_images_per_s": [r["model_images_per_s"] for r in rs],
                   "images": rs[0]["images"], "failed": sum(r["failed"] for r in rs)} for name, rs in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--images", type=int, default=96, help="0.3 MP photos per batch run")
    parser.add_argument("--images-12mp", type=int, default=6, help="12 MP photos per batch run")
    parser.add_argument("--rounds", type=int, default=2, help="batch runs per mode, alternating")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of " + ", ".join(SIZES))
    parser.add_argument("--photos", type=int, default=6, help="how many of the six photos to profile step by step")
    args = parser.parse_args(argv)

    from langcolor.client import families, lab_fast
    from langcolor.client.colorizer import Colorizer

    colorizer = Colorizer(model=families.DEFAULT_FAMILY)  # the shipped default: a caption-conditioned family
    lab_fast.load()  # what a long batch does; False without numba
    sources = dict(list(photos().items())[: args.photos])
    work = Path(tempfile.mkdtemp(prefix="langcolor-archive-"))
    result = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": os.getloadavg()},
              "compiled_reconstruct": lab_fast.READY, "sizes": {}}
    try:
        for label in args.sizes.split(","):
            size = SIZES[label]
            files = {name: jpeg(rgb, size) for name, rgb in sources.items()}
            per_photo = {name: profile_steps(data, colorizer, REPEATS[label]) for name, data in files.items()}
            folder = work / label
            folder.mkdir()
            count = args.images if label == "0.3MP" else args.images_12mp
            names = list(files)
            for i in range(count):
                (folder / f"{i:04d}_{names[i % len(names)]}.jpg").write_bytes(files[names[i % len(names)]])
            batches = run_batches(folder, colorizer, args.rounds, work / f"out-{label}")
            result["sizes"][label] = {"per_photo": per_photo, "batch": batches}
            shutil.rmtree(work / f"out-{label}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_after"] = os.getloadavg()
    args.output.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary(result), indent=1))
    return 0


def summary(result: dict) -> dict:
    """Medians over the photos of each size: the table in benchmarks/PREPOST.md."""
    out = {}
    for label, r in result["sizes"].items():
        photos_ = list(r["per_photo"].values())
        steps = {step: {k: round(statistics.median(p["steps_ms"][step][k] for p in photos_), 2)
                        for k in photos_[0]["steps_ms"][step]} for step in photos_[0]["steps_ms"]}
        med = {k: statistics.median(p[k] for p in photos_) for k in ("product_sum_ms", "floor_sum_ms", "floor_sum_l_kept_ms")}
        out[label] = {"steps_ms": steps, **{k: round(v, 1) for k, v in med.items()},
                      "floor_2_cores_images_per_s": round(2000 / med["floor_sum_ms"], 1),
                      "floor_l_kept_2_cores_images_per_s": round(2000 / med["floor_sum_l_kept_ms"], 1),
                      "batch": r["batch"]}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
