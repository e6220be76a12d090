"""Batch colorization: path safety, records and resume, and real runs killed with SIGKILL.

Real parts only: photographs from scikit-image, a real (tiny or shipped) ONNX model repository
run by the real Colorizer; bad files are real bad files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms
from skimage import data as skdata
from skimage.transform import resize

from langcolor.client import families
from langcolor.client.batch_sources import plan_batch, read_manifest
from langcolor.client.batch_state import JobKey, RecordLog, condition_key, remove_stale_temporaries
from langcolor.client.errors import LangcolorError
from langcolor.client.outputs import TMP_MARK, write_atomic

FIELDS = families.get("lcode").inputs  # caption


def _plan(*args, caption=None, **kw):
    return plan_batch(*args, defaults={"caption": caption} if caption else None, fields=FIELDS, **kw)


def _caption(item) -> str | None:
    return None if item.inputs is None else item.inputs.get("caption")


def _key(caption: str, weights: str = "w" * 64) -> JobKey:
    return JobKey("lcode", weights, condition_key({"caption": caption}), "PNG")

# --------------------------------------------------------------------------- test photographs


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8) if a.dtype != np.uint8 else a


def _sized(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return _u8(resize(a, (h, w) + a.shape[2:], anti_aliasing=True))


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header is patched to declare width x height: a decompression bomb."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    ihdr = 8  # signature, then the IHDR chunk: length(4) type(4) data(13) crc(4)
    raw[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    raw[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr + 4 : ihdr + 21])))
    return bytes(raw)


# Captions use words every model knows (the tiny test model's and the shipped model's vocabularies).
GOOD = {  # relative path -> caption
    "astronaut.png": "a red circle on a blue background",
    "coffee.jpg": "a brown circle",
    "cats/chelsea_small.png": "an orange triangle",
    "cats/deep/chelsea_tall.jpg": "an orange triangle",
    "gray/camera.png": "a gray square",
    "gray/moon16.png": "a yellow circle",
    "cmyk.jpg": "a red triangle",
    "rotated.jpg": "a brown circle",
    "rgba.png": "a purple square",
    "icc.tif": "a blue square on a green background",
    "tiny.png": "a green square",
}
BAD = {  # relative path -> what is wrong with it
    "broken/corrupt.png": "png signature then noise",
    "broken/truncated.jpg": "first third of a jpeg",
    "broken/notes.png": "a text file",
    "broken/empty.jpg": "zero bytes",
    "broken/bomb.png": "declares 60000 x 60000",
    "broken/too_big.jpg": "700 x 500, over the --max-pixels used here",
}
MAX_PIXELS = 300_000


def write_photos(root: Path) -> None:
    """The mixed archive of GOOD and BAD files under ``root``."""
    for rel in list(GOOD) + list(BAD):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    astronaut, coffee, chelsea = skdata.astronaut(), skdata.coffee(), skdata.chelsea()
    Image.fromarray(_sized(astronaut, 384, 384)).save(root / "astronaut.png")
    Image.fromarray(coffee).save(root / "coffee.jpg", quality=90)
    Image.fromarray(_sized(chelsea, 75, 113)).save(root / "cats/chelsea_small.png")
    Image.fromarray(_sized(chelsea, 520, 200)).save(root / "cats/deep/chelsea_tall.jpg", quality=85)
    Image.fromarray(skdata.camera()).save(root / "gray/camera.png")
    moon16 = (skdata.moon().astype(np.uint16) * 257)[:300, :420]  # 16-bit grayscale
    Image.fromarray(moon16).save(root / "gray/moon16.png")
    Image.fromarray(_sized(skdata.rocket(), 240, 360)).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "Langcolor Test Camera"  # Make, to see EXIF carried over
    Image.fromarray(_sized(coffee, 200, 300)).save(root / "rotated.jpg", exif=exif.tobytes(), quality=90)
    rgba = np.dstack([_sized(astronaut, 160, 160), np.linspace(0, 255, 160 * 160).reshape(160, 160).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_sized(skdata.immunohistochemistry(), 256, 200)).save(root / "icc.tif", icc_profile=srgb)
    Image.fromarray(_sized(astronaut, 1, 1)).save(root / "tiny.png")

    jpeg = io.BytesIO()
    Image.fromarray(chelsea).save(jpeg, "JPEG", quality=90)
    rng = np.random.default_rng(0)
    (root / "broken/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(3000))
    (root / "broken/truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    (root / "broken/notes.png").write_text("Box 12: photographs of the harbour, 1931.\n")
    (root / "broken/empty.jpg").write_bytes(b"")
    (root / "broken/bomb.png").write_bytes(_png_declaring(60000, 60000))
    Image.fromarray(_sized(coffee, 500, 700)).save(root / "broken/too_big.jpg")


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- planning and path safety


def test_plan_walks_recursively_and_keeps_relative_paths(tmp_path):
    src = tmp_path / "src"
    write_photos(src)
    (src / ".hidden").mkdir()
    Image.new("L", (4, 4)).save(src / ".hidden/x.png")  # hidden folders are not walked
    (src / "readme.txt").write_text("not an image extension")
    plan = _plan(src, tmp_path / "out", caption="a photo", fmt="png")
    rels = {item.rel for item in plan.items}
    assert rels == set(GOOD) | set(BAD)
    by_rel = {item.rel: item for item in plan.items}
    assert by_rel["cats/deep/chelsea_tall.jpg"].out_rel == "cats/deep/chelsea_tall.png"
    assert all(_caption(item) == "a photo" for item in plan.items)
    same = {i.rel: (i.out_rel, i.out_format) for i in _plan(src, tmp_path / "o2", fmt="same").items}
    assert same["coffee.jpg"] == ("coffee.jpg", "JPEG") and same["icc.tif"] == ("icc.tif", "TIFF")


@pytest.mark.parametrize("where", ["inside", "same", "parent"])
def test_output_overlapping_the_source_is_refused(tmp_path, where):
    src = tmp_path / "archive"
    (src / "a").mkdir(parents=True)
    out = {"inside": src / "a" / "colour", "same": src, "parent": tmp_path}[where]
    with pytest.raises(LangcolorError, match="overlap"):
        _plan(src, out, caption="x")


@pytest.mark.parametrize(
    "bad_path",
    ["../outside.png", "a/../../outside.png", "/etc/passwd", ".langcolor/records.png"],
)
def test_manifest_path_leaving_the_tree_is_refused(tmp_path, bad_path):
    src = tmp_path / "archive"
    src.mkdir()
    Image.new("L", (4, 4)).save(src / "ok.png")
    Image.new("L", (4, 4)).save(tmp_path / "outside.png")
    manifest = src / "list.jsonl"
    lines = [{"path": "ok.png", "caption": "a cat"}, {"path": bad_path, "caption": "a dog"}]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(LangcolorError, match="list.jsonl:2") as err:
        _plan(manifest, tmp_path / "out")
    assert bad_path in str(err.value)


def test_symlink_out_of_the_tree_is_refused(tmp_path):
    src = tmp_path / "archive"
    src.mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "secret.png")
    (src / "link.png").symlink_to(tmp_path / "secret.png")
    manifest = src / "list.csv"
    manifest.write_text("path,caption\nlink.png,a cat\n")
    with pytest.raises(LangcolorError, match="leaves the source tree"):
        _plan(manifest, tmp_path / "out")
    # Walking the folder ignores it instead of following it out.
    assert _plan(src, tmp_path / "out", caption="x").items == ()


def test_output_collisions_are_refused(tmp_path):
    src = tmp_path / "archive"
    src.mkdir()
    Image.new("L", (4, 4)).save(src / "scan.png")
    Image.new("L", (4, 4)).save(src / "scan.jpg")
    with pytest.raises(LangcolorError, match="collision.*scan.png"):
        _plan(src, tmp_path / "out", caption="x", fmt="png")
    assert len(_plan(src, tmp_path / "out", caption="x", fmt="same").items) == 2
    manifest = src / "list.csv"
    manifest.write_text("path,caption\nscan.png,a cat\n./scan.png,a dog\n")
    with pytest.raises(LangcolorError, match="listed twice"):
        _plan(manifest, tmp_path / "out")


def test_manifests_csv_and_jsonl(tmp_path):
    src = tmp_path / "archive"
    (src / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png", "d.png"):
        Image.new("L", (4, 4)).save(src / name)
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text('\ufeffpath,caption\na.png,"red roof, green door"\nsub/c.png,   \nmissing.png,a dog\n')
    entries = read_manifest(csv_path, FIELDS)
    assert [(e.line, e.path, e.values.get("caption")) for e in entries] == [
        (2, "a.png", "red roof, green door"), (3, "sub/c.png", None), (4, "missing.png", "a dog")
    ]
    plan = _plan(src, tmp_path / "out", manifest=csv_path)
    captions = {i.rel: _caption(i) for i in plan.items}
    # b.png and d.png are walked but have no caption; sub/c.png has a blank one: all skipped (None).
    assert captions == {"a.png": "red roof, green door", "b.png": None, "sub/c.png": None, "d.png": None}
    assert plan.missing == (("missing.png", "listed in the manifest but not found"),)

    jsonl = src / "list.jsonl"
    jsonl.write_text('{"path": "b.png", "caption": "blue sky"}\n\n{"path": "sub/c.png"}\n')
    plan = _plan(jsonl, tmp_path / "out", caption="an old photo")
    assert {i.rel: _caption(i) for i in plan.items} == {"b.png": "blue sky", "sub/c.png": "an old photo"}

    for text, problem in [
        ("name,caption\na.png,x\n", "header"),
        ("path,reference\na.png,x.png\n", r"unknown column\(s\) \['reference'\]"),
        ('{"path": 3}\n', "string 'path'"),
        ("{not json\n", "not valid JSON"),
    ]:
        bad = tmp_path / ("bad.csv" if text.startswith(("name", "path")) else "bad.jsonl")
        bad.write_text(text)
        with pytest.raises(LangcolorError, match=problem):
            read_manifest(bad, FIELDS)
    invalid = tmp_path / "bad2.csv"
    invalid.write_bytes(b"path,caption\na.png,caf\xe9\n")
    with pytest.raises(LangcolorError, match="bad2.csv:2: manifest is not valid UTF-8"):
        read_manifest(invalid, FIELDS)


# --------------------------------------------------------------------------- records and atomic writes


def test_records_survive_a_cut_line_and_check_key_hash_and_size(tmp_path):
    key = _key("a red car")
    with RecordLog(tmp_path) as log:
        write_atomic(tmp_path / "a.png", b"12345")
        log.add("a.png", "a.png", "s" * 64, key, 5)
        write_atomic(tmp_path / "sub/b.png", b"123", make_parents=True)
        log.add("sub/b.png", "sub/b.png", "t" * 64, key, 3)
        with pytest.raises(LangcolorError, match="another batch run"):
            RecordLog(tmp_path).open()  # one writer per output folder
    with open(tmp_path / ".langcolor/records.jsonl", "a") as f:
        f.write('{"output": "c.png", "input": "c.p')  # what SIGKILL mid-append leaves
    with RecordLog(tmp_path) as log:
        assert len(log) == 2
        assert log.is_done("a.png", "s" * 64, key)
        assert not log.is_done("a.png", "x" * 64, key)  # input content changed
        assert not log.is_done("a.png", "s" * 64, _key("a blue car"))
        assert not log.is_done("a.png", "s" * 64, _key("a red car", "v" * 64))
        (tmp_path / "sub/b.png").write_bytes(b"1")  # output truncated by someone else
        assert not log.is_done("sub/b.png", "t" * 64, key)
        assert not log.is_done("c.png", "s" * 64, key)
    lines = (tmp_path / ".langcolor/records.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)  # compacted, cut line gone


def test_write_atomic_leaves_no_temporary_and_stale_ones_are_removed(tmp_path):
    write_atomic(tmp_path / "x/y.png", b"data", make_parents=True)
    assert (tmp_path / "x/y.png").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["y.png"]
    stale = tmp_path / "x" / f".y.png{TMP_MARK}12345-abcd"
    stale.write_bytes(b"half an ima")
    keep = tmp_path / "x" / ".notes"
    keep.write_text("not ours")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and keep.exists()


# --------------------------------------------------------------------------- real runs


def _shipped_repository() -> Path | None:
    from langcolor.client.paths import default_model_repository

    repo = default_model_repository()
    ready = (repo / "lcode/1/langcolor.json").is_file() and all(
        (repo / f"lcode_{stage}/1/model.onnx").is_file() for stage in ("encoder", "fusion", "decoder")
    )
    return repo if ready else None


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory) -> Path:
    """The shipped model repository when it is there, else a tiny random-weight export."""
    shipped = _shipped_repository()
    if shipped is not None:
        return shipped
    from langcolor.export.triton_repo import build_tiny_repository

    return build_tiny_repository(tmp_path_factory.mktemp("tiny_repo"))


@pytest.fixture(scope="module")
def colorizer(model_repo):
    from langcolor.client.colorizer import Colorizer

    return Colorizer(model_repository=model_repo, max_pixels=MAX_PIXELS)


def write_bulk(root: Path, count: int) -> dict[str, str]:
    """``count`` more real photos of mixed sizes, so a run lasts long enough to be killed."""
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    captions = ["a red circle", "a blue square", "a green triangle", "a yellow square"]
    out = {}
    for i in range(count):
        side = 96 + 37 * i
        rel = f"bulk/{i % 3}/photo_{i:02d}." + ("jpg" if i % 2 else "png")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_sized(photos[i % 4], side % 400 + 64, (side * 7) % 450 + 64)).save(root / rel)
        out[rel] = captions[i % 4]
    return out


def _write_captions(path: Path, captions: dict[str, str]) -> None:
    lines = ["path,caption"] + [f"{rel},{caption}" for rel, caption in captions.items()]
    path.write_text("\n".join(lines) + "\n")


def _outputs(out: Path) -> set[str]:
    """Every file under the output folder except the run's own bookkeeping."""
    return {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and ".langcolor" not in p.relative_to(out).parts and p.name != "failures.jsonl"
    }


def _records(out: Path) -> list[dict]:
    lines = (out / ".langcolor/records.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _lightness(rgb: np.ndarray) -> np.ndarray:
    from langcolor.client.lab import rgb_to_lab

    return rgb_to_lab(rgb)[..., 0]  # [H, W]


def _batch_cmd(src: Path, out: Path, captions: Path, repo: Path) -> list[str]:
    return [
        sys.executable, "-m", "langcolor.client.cli", "batch", str(src), "--output", str(out),
        "--captions", str(captions), "--default-caption", "a gray square", "--model-repository", str(repo),
        "--max-pixels", str(MAX_PIXELS), "--workers", "1", "--batch-size", "2", "--no-progress",
    ]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_interrupted_run_then_rerun_finishes_every_image_exactly_once(tmp_path, model_repo, sig):
    from langcolor.client.imageio import load_image

    src, out = tmp_path / "archive", tmp_path / "colour"
    write_photos(src)
    captions = dict(GOOD) | write_bulk(src, 30)
    manifest = tmp_path / "captions.csv"
    _write_captions(manifest, captions)
    before = tree_hashes(src)

    proc = subprocess.Popen(_batch_cmd(src, out, manifest, model_repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = out / ".langcolor/records.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and records.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    finished_before = {r["output"] for r in _records(out)}
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, "the first run ended before it could be killed"
    else:  # Ctrl-C: running writes complete, nothing half-written, exit status 130
        assert proc.returncode == 130, err
        assert b"interrupted" in err
        assert _outputs(out) == finished_before
    assert 2 <= len(finished_before) < len(captions)

    stale = out / "bulk/0" / f".photo_00.png{TMP_MARK}99999-dead"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"\x89PNG half")  # as a kill between write and rename leaves it
    rerun = subprocess.run(_batch_cmd(src, out, manifest, model_repo), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stderr  # the bad files failed
    summary = rerun.stdout.strip().splitlines()[-2]
    assert f"already done {len(finished_before)}," in summary, summary
    assert f"done {len(captions) - len(finished_before)}," in summary, summary
    assert f"failed {len(BAD)} " in summary, summary

    # Every good image exactly once, under its relative path; nothing else (no temporaries).
    expected = {str(Path(rel).with_suffix(".png").as_posix()) for rel in captions}
    assert _outputs(out) == expected
    assert sorted(r["output"] for r in _records(out)) == sorted(expected)  # one record each
    report = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["input"] for f in report) == sorted(BAD)
    reasons = {f["input"]: f["reason"] for f in report}
    assert "exceeds the limit" in reasons["broken/too_big.jpg"]
    assert "truncated" in reasons["broken/truncated.jpg"]
    assert "empty" in reasons["broken/empty.jpg"]
    assert tree_hashes(src) == before  # inputs never modified

    for rel in captions:
        original = load_image(src / rel)
        result_path = out / Path(rel).with_suffix(".png")
        with Image.open(result_path) as im:
            im.load()
            assert im.size == original.size, rel  # upright: orientation applied to the pixels
            assert im.mode == "RGB"
        result = load_image(result_path)
        diff = np.abs(_lightness(result.rgb) - _lightness(original.rgb))  # [H, W]
        assert diff.max() < 1.0, (rel, float(diff.max()))  # the input's L, up to 8-bit rounding
    with Image.open(out / "rotated.png") as im:
        exif = im.getexif()
        assert exif.get(0x010F) == "Langcolor Test Camera" and exif.get(0x0112) in (None, 1)
    with Image.open(out / "icc.png") as im, Image.open(src / "icc.tif") as orig:
        assert im.info.get("icc_profile") == orig.info["icc_profile"]


def test_changed_caption_or_model_redoes_only_what_changed(tmp_path, colorizer, model_repo):
    from langcolor.client.batch import BatchOptions, run_batch
    from langcolor.client.colorizer import Colorizer
    from langcolor.export.triton_repo import build_tiny_repository

    src, out = tmp_path / "archive", tmp_path / "colour"
    src.mkdir()
    for name, photo in [("a.png", skdata.astronaut()), ("b.jpg", skdata.coffee()), ("c.png", skdata.chelsea())]:
        Image.fromarray(_sized(photo, 120, 160)).save(src / name)
    Image.fromarray(_sized(skdata.rocket(), 100, 100)).save(src / "uncaptioned.png")
    manifest = src / "list.jsonl"

    def run(captions: dict[str, str], with_colorizer=colorizer):
        manifest.write_text("".join(json.dumps({"path": p, "caption": c}) + "\n" for p, c in captions.items()))
        return run_batch(BatchOptions(manifest, out, progress=False, workers=2, batch_size=2), with_colorizer)

    captions = {"a.png": "a red circle", "b.jpg": "a blue square", "c.png": "a green triangle", "uncaptioned.png": ""}
    first = run(captions)
    assert (first.done, first.already_done, first.skipped, first.failed) == (3, 0, 1, 0)
    assert first.skipped_inputs == ("uncaptioned.png",) and first.ok
    stamps = {p: (out / p).stat().st_mtime_ns for p in ("a.png", "b.png", "c.png")}
    old_b = (out / "b.png").read_bytes()

    again = run(captions)
    assert (again.done, again.already_done) == (0, 3)
    assert {p: (out / p).stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten

    changed = run(captions | {"b.jpg": "a yellow circle"})
    assert (changed.done, changed.already_done) == (1, 2)
    assert (out / "a.png").stat().st_mtime_ns == stamps["a.png"]
    assert (out / "c.png").stat().st_mtime_ns == stamps["c.png"]
    assert (out / "b.png").read_bytes() != old_b  # a different caption, different colours
    assert {r["output"]: json.loads(r["condition"])["caption"] for r in _records(out)}["b.png"] == "a yellow circle"
    yellow_b = (out / "b.png").read_bytes()

    unknown = run(captions | {"b.jpg": "zzzq qqqz"})  # no known word: this image fails alone
    assert (unknown.done, unknown.already_done, unknown.failed) == (0, 2, 1) and not unknown.ok
    assert unknown.failures[0].input == "b.jpg" and "no word" in unknown.failures[0].reason
    assert (out / "b.png").read_bytes() == yellow_b  # the previous output is left whole

    other = Colorizer(model_repository=build_tiny_repository(tmp_path / "other_model", seed=1))
    assert other.bundle.manifest.weights_sha256 != colorizer.bundle.manifest.weights_sha256
    remodel = run(captions, with_colorizer=other)
    assert (remodel.done, remodel.already_done) == (3, 0)


def test_cli_refuses_unsafe_jobs_before_any_work(tmp_path):
    from langcolor.client.cli import main

    src = tmp_path / "archive"
    src.mkdir()
    Image.new("L", (8, 8)).save(src / "x.png")
    assert main(["batch", str(src), "--output", str(src / "out"), "--default-caption", "a red circle"]) == 2
    assert main(["batch", str(src), "--output", str(tmp_path / "out")]) == 2  # no caption source at all
    (src / "list.csv").write_text("path,caption\n../../etc/passwd,a red circle\n")
    assert main(["batch", str(src / "list.csv"), "--output", str(tmp_path / "out")]) == 2
    assert not (src / "out").exists() and not (tmp_path / "out").exists()
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["batch", str(src), "--output", str(tmp_path / "a_file"), "--default-caption", "a red circle"]) == 2
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_bad_captions_in_a_manifest_fail_alone(tmp_path, colorizer):
    from langcolor.client.batch import BatchOptions, run_batch

    src = tmp_path / "archive"
    src.mkdir()
    cases = {  # file -> (caption, what must happen)
        "good.png": ("a red circle", "done"),
        "control.png": ("a red\x00\x07 circle\u200b", "done"),  # control characters are not words
        "empty.png": ("", "skipped"),
        "blank.png": (" \t\n ", "skipped"),
        "unknown.png": ("zzzq qqqz", "no word of the caption is known"),
        "long.png": ("red " * 50_000, "words; this model reads at most"),
        "one_huge_word.png": ("x" * 100_000, "no word of the caption is known"),
    }
    photo = _sized(skdata.astronaut(), 64, 80)
    for name in cases:
        Image.fromarray(photo).save(src / name)
    manifest = src / "list.jsonl"
    manifest.write_text("".join(json.dumps({"path": p, "caption": c}) + "\n" for p, (c, _) in cases.items()))
    summary = run_batch(BatchOptions(manifest, tmp_path / "out", progress=False), colorizer)
    reasons = {f.input: f.reason for f in summary.failures}
    for name, (_, expected) in cases.items():
        written = (tmp_path / "out" / name).exists()
        if expected == "done":
            assert written and name not in reasons, name
        elif expected == "skipped":
            assert name in summary.skipped_inputs and not written and name not in reasons
        else:
            assert expected in reasons[name] and not written, (name, reasons.get(name))
    assert all(len(r) <= 300 for r in reasons.values())  # a reason names the problem, never echoes 100 kB


def test_format_same_keeps_format_and_metadata(tmp_path, colorizer):
    from langcolor.client.batch import BatchOptions, run_batch
    from langcolor.client.imageio import load_image

    src = tmp_path / "archive"
    write_photos(src)
    shutil.rmtree(src / "broken")
    (src / "bmp").mkdir()
    Image.fromarray(_sized(skdata.chelsea(), 60, 90)).save(src / "bmp/cat.bmp")
    summary = run_batch(BatchOptions(src, tmp_path / "out", inputs={"caption": "a red circle"}, format="same",
                                     progress=False), colorizer)
    assert summary.ok and summary.done == len(GOOD) + 1
    formats = {"coffee.jpg": "JPEG", "rotated.jpg": "JPEG", "icc.tif": "TIFF", "astronaut.png": "PNG",
               "bmp/cat.png": "PNG"}  # BMP carries no metadata: written as PNG
    for rel, fmt in formats.items():
        with Image.open(tmp_path / "out" / rel) as im:
            assert im.format == fmt, rel
    with Image.open(tmp_path / "out/icc.tif") as im, Image.open(src / "icc.tif") as orig:
        assert im.info.get("icc_profile") == orig.info["icc_profile"]
    with Image.open(tmp_path / "out/rotated.jpg") as im:
        assert im.size == (200, 300) and im.getexif().get(0x0112) in (None, 1)
        assert im.getexif().get(0x010F) == "Langcolor Test Camera"
    for rel in ("coffee.jpg", "rotated.jpg"):  # lossy output: L kept up to JPEG's own error
        diff = np.abs(_lightness(load_image(tmp_path / "out" / rel).rgb) - _lightness(load_image(src / rel).rgb))
        assert diff.mean() < 1.5, (rel, float(diff.mean()))


def test_worker_processes_write_what_threads_write(tmp_path, colorizer):
    """The pixel work in worker processes: the same files, byte for byte, and the same failures
    (a bad file fails alone there too, with the same reason), as on the batch's own threads."""
    from langcolor.client.batch import BatchOptions, run_batch
    from langcolor.client import lab_fast
    from langcolor.client.batch_sources import STATE_DIR

    lab_fast.load()  # the workers load the compiled reconstruct where numba is installed; so does this process
    src = tmp_path / "archive"
    write_photos(src)
    runs = {}
    for processes in (0, 2):
        out = tmp_path / f"out{processes}"
        summary = run_batch(BatchOptions(src, out, inputs={"caption": "a red circle"}, format="same", progress=False,
                                         processes=processes), colorizer)
        assert summary.done == len(GOOD) and summary.aborted is None
        report = summary.report.relative_to(out).as_posix()  # its lines come in the order images finished
        files = {k: v for k, v in tree_hashes(out).items() if not k.startswith(STATE_DIR) and k != report}
        runs[processes] = files, sorted((f.input, f.reason) for f in summary.failures)
    assert runs[2] == runs[0]
    assert [name for name, _ in runs[0][1]] == sorted(BAD)


def test_benchmark_reports_pipeline_and_model_throughput(tmp_path, model_repo):
    from langcolor.client.batch import benchmark_batch, write_benchmark_photos
    from langcolor.client.colorizer import Colorizer

    colorizer = Colorizer(model_repository=model_repo)  # the default pixel cap: photos up to 2 megapixels

    paths = write_benchmark_photos(tmp_path / "photos", count=6)
    assert len({Image.open(p).size for p in paths}) > 1  # mixed sizes
    result = benchmark_batch(tmp_path / "photos", tmp_path / "work", colorizer, {"caption": "a red circle"}, batch_size=4)
    assert result["images"] == 6 and result["failed"] == 0
    assert result["pipeline_images_per_s"] > 0 and result["model_images_per_s"] > 0
    # The reported size is the photos' own (outputs keep the input's size), computed here independently.
    sizes = [Image.open(p).size for p in paths]
    assert result["mean_megapixels"] == pytest.approx(sum(w * h for w, h in sizes) / len(sizes) / 1e6, rel=1e-9)


# --------------------------------------------------------------------------- through a Triton server


def _small_archive(root: Path) -> dict[str, str]:
    photos = {
        "a.png": (skdata.astronaut(), "a red circle"),
        "b.jpg": (skdata.coffee(), "a blue square"),
        "sub/c.png": (skdata.chelsea(), "an orange triangle"),
        "sub/d.png": (skdata.camera(), "a gray square"),
        "e.jpg": (skdata.rocket(), "a green triangle"),
    }
    for i, (rel, (photo, _)) in enumerate(photos.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_sized(photo, 90 + 40 * i, 140 + 25 * i)).save(root / rel)
    return {rel: caption for rel, (_, caption) in photos.items()}


@pytest.mark.server
@pytest.mark.parametrize("via", ["endpoint", "ensemble"])
def test_batch_through_server_gives_the_in_process_pixels(tmp_path, server_url, protocol, served_repository, via):
    from langcolor.client.batch import BatchOptions, run_batch
    from langcolor.client.colorizer import Colorizer

    src = tmp_path / "archive"
    captions = _small_archive(src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    manifest = tmp_path / "captions.csv"
    _write_captions(manifest, captions | {"broken.png": "a red circle"})
    remote = Colorizer(server=server_url, protocol=protocol, model_repository=served_repository.path, via=via)
    local = Colorizer(model_repository=served_repository.path)
    common = dict(source=src, manifest=manifest, batch_size=2, workers=2, progress=False)
    served = run_batch(BatchOptions(output=tmp_path / "served", server=server_url, protocol=protocol, via=via, **common),
                       remote)
    inproc = run_batch(BatchOptions(output=tmp_path / "local", **common), local)
    assert (served.done, served.failed) == (len(captions), 1) and [f.input for f in served.failures] == ["broken.png"]
    assert (inproc.done, inproc.failed) == (len(captions), 1)
    for rel in captions:
        out_rel = Path(rel).with_suffix(".png")
        a = np.asarray(Image.open(tmp_path / "served" / out_rel), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "local" / out_rel), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2, rel


@pytest.mark.server
@pytest.mark.slow
def test_server_killed_mid_batch_then_rerun_finishes_every_image_once(tmp_path, served_repository):
    """The server dies under a running batch: the client retries, then stops clearly; after a restart
    the same command finishes the rest, each image exactly once."""
    from langcolor.client.errors import ModelNotFoundError
    from langcolor.server.launcher import TritonDist, TritonServer, free_ports

    try:
        TritonDist.locate()
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    src, out = tmp_path / "archive", tmp_path / "colour"
    captions = _small_archive(src) | write_bulk(src, 16)
    manifest = tmp_path / "captions.csv"
    _write_captions(manifest, captions)
    ports = free_ports(3)

    def server() -> TritonServer:
        return TritonServer(served_repository.path, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                            log_path=tmp_path / "tritonserver.log")

    cmd = [
        sys.executable, "-m", "langcolor.client.cli", "batch", str(src), "--output", str(out),
        "--captions", str(manifest), "--server", f"127.0.0.1:{ports[1]}", "--protocol", "grpc",
        "--model-repository", str(served_repository.path), "--workers", "1", "--batch-size", "1",
        "--in-flight", "1", "--no-progress",
    ]
    with server() as first:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        records = out / ".langcolor/records.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if records.exists() and records.read_text().count("\n") >= 2:
                break
            time.sleep(0.01)
        os.killpg(first.process.pid, signal.SIGKILL)  # no goodbye to in-flight requests
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert "stopped early" in stderr and "rerun" in stderr
    finished_before = {r["output"] for r in _records(out)}
    assert 2 <= len(finished_before) < len(captions)
    assert not (out / "failures.jsonl").read_text()  # the images were not at fault

    with server():
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"already done {len(finished_before)}," in rerun.stdout
    expected = {Path(rel).with_suffix(".png").as_posix() for rel in captions}
    assert _outputs(out) == expected
    assert sorted(r["output"] for r in _records(out)) == sorted(expected)
