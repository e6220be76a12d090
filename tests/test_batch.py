"""Batch colorization: path safety, records and resume, and real runs killed with SIGKILL.

Real parts only: photographs from scikit-image, a real (tiny or shipped) ONNX model repository
run by the real Colorizer; bad files are real bad files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
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

from langcolor.client.batch_sources import plan_batch, read_manifest
from langcolor.client.batch_state import (
    TMP_MARK,
    JobKey,
    RecordLog,
    remove_stale_temporaries,
    write_atomic,
)
from langcolor.client.errors import LangcolorError

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


GOOD = {  # relative path -> caption
    "astronaut.png": "a person in a white suit",
    "coffee.jpg": "a cup of brown coffee",
    "cats/chelsea_small.png": "an orange cat",
    "cats/deep/chelsea_tall.jpg": "an orange cat",
    "gray/camera.png": "a man with a black camera",
    "gray/moon16.png": "a gray moon",
    "cmyk.jpg": "a red rocket",
    "rotated.jpg": "a cup of brown coffee",
    "rgba.png": "a person in a white suit",
    "icc.tif": "blue sky over the sea",
    "tiny.png": "green grass",
}
BAD = {  # relative path -> what is wrong with it
    "broken/corrupt.png": "png signature then noise",
    "broken/truncated.jpg": "first third of a jpeg",
    "broken/notes.png": "a text file",
    "broken/empty.jpg": "zero bytes",
    "broken/bomb.png": "declares 60000 x 60000",
}


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
    plan = plan_batch(src, tmp_path / "out", default_caption="a photo", fmt="png")
    rels = {item.rel for item in plan.items}
    assert rels == set(GOOD) | set(BAD)
    by_rel = {item.rel: item for item in plan.items}
    assert by_rel["cats/deep/chelsea_tall.jpg"].out_rel == "cats/deep/chelsea_tall.png"
    assert all(item.caption == "a photo" for item in plan.items)
    same = {i.rel: (i.out_rel, i.out_format) for i in plan_batch(src, tmp_path / "o2", fmt="same").items}
    assert same["coffee.jpg"] == ("coffee.jpg", "JPEG") and same["icc.tif"] == ("icc.tif", "TIFF")


@pytest.mark.parametrize("where", ["inside", "same", "parent"])
def test_output_overlapping_the_source_is_refused(tmp_path, where):
    src = tmp_path / "archive"
    (src / "a").mkdir(parents=True)
    out = {"inside": src / "a" / "colour", "same": src, "parent": tmp_path}[where]
    with pytest.raises(LangcolorError, match="overlap"):
        plan_batch(src, out, default_caption="x")


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
        plan_batch(manifest, tmp_path / "out")
    assert bad_path in str(err.value)


def test_symlink_out_of_the_tree_is_refused(tmp_path):
    src = tmp_path / "archive"
    src.mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "secret.png")
    (src / "link.png").symlink_to(tmp_path / "secret.png")
    manifest = src / "list.csv"
    manifest.write_text("path,caption\nlink.png,a cat\n")
    with pytest.raises(LangcolorError, match="leaves the source tree"):
        plan_batch(manifest, tmp_path / "out")
    # Walking the folder ignores it instead of following it out.
    assert plan_batch(src, tmp_path / "out", default_caption="x").items == ()


def test_output_collisions_are_refused(tmp_path):
    src = tmp_path / "archive"
    src.mkdir()
    Image.new("L", (4, 4)).save(src / "scan.png")
    Image.new("L", (4, 4)).save(src / "scan.jpg")
    with pytest.raises(LangcolorError, match="collision.*scan.png"):
        plan_batch(src, tmp_path / "out", default_caption="x", fmt="png")
    assert len(plan_batch(src, tmp_path / "out", default_caption="x", fmt="same").items) == 2
    manifest = src / "list.csv"
    manifest.write_text("path,caption\nscan.png,a cat\n./scan.png,a dog\n")
    with pytest.raises(LangcolorError, match="listed twice"):
        plan_batch(manifest, tmp_path / "out")


def test_manifests_csv_and_jsonl(tmp_path):
    src = tmp_path / "archive"
    (src / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png", "d.png"):
        Image.new("L", (4, 4)).save(src / name)
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text('\ufeffpath,caption\na.png,"red roof, green door"\nsub/c.png,   \nmissing.png,a dog\n')
    entries = read_manifest(csv_path)
    assert [(e.line, e.path, e.caption) for e in entries] == [
        (2, "a.png", "red roof, green door"), (3, "sub/c.png", None), (4, "missing.png", "a dog")
    ]
    plan = plan_batch(src, tmp_path / "out", captions=csv_path, default_caption=None)
    captions = {i.rel: i.caption for i in plan.items}
    # b.png and d.png are walked but have no caption; sub/c.png has a blank one: all skipped (None).
    assert captions == {"a.png": "red roof, green door", "b.png": None, "sub/c.png": None, "d.png": None}
    assert plan.missing == (("missing.png", "listed in the manifest but not found"),)

    jsonl = src / "list.jsonl"
    jsonl.write_text('{"path": "b.png", "caption": "blue sky"}\n\n{"path": "sub/c.png"}\n')
    plan = plan_batch(jsonl, tmp_path / "out", default_caption="an old photo")
    assert {i.rel: i.caption for i in plan.items} == {"b.png": "blue sky", "sub/c.png": "an old photo"}

    for text, problem in [
        ("name,caption\na.png,x\n", "header"),
        ('{"path": 3}\n', "string 'path'"),
        ("{not json\n", "not valid JSON"),
    ]:
        bad = tmp_path / ("bad.csv" if text.startswith("name") else "bad.jsonl")
        bad.write_text(text)
        with pytest.raises(LangcolorError, match=problem):
            read_manifest(bad)
    invalid = tmp_path / "bad2.csv"
    invalid.write_bytes(b"path,caption\na.png,caf\xe9\n")
    with pytest.raises(LangcolorError, match="bad2.csv:2: manifest is not valid UTF-8"):
        read_manifest(invalid)


# --------------------------------------------------------------------------- records and atomic writes


def test_records_survive_a_cut_line_and_check_key_hash_and_size(tmp_path):
    key = JobKey("lcode", "w" * 64, "a red car", "PNG")
    with RecordLog(tmp_path) as log:
        write_atomic(tmp_path / "a.png", b"12345")
        log.add("a.png", "a.png", "s" * 64, key, 5)
        write_atomic(tmp_path / "sub/b.png", b"123")
        log.add("sub/b.png", "sub/b.png", "t" * 64, key, 3)
        with pytest.raises(LangcolorError, match="another batch run"):
            RecordLog(tmp_path).open()  # one writer per output folder
    with open(tmp_path / ".langcolor/records.jsonl", "a") as f:
        f.write('{"output": "c.png", "input": "c.p')  # what SIGKILL mid-append leaves
    with RecordLog(tmp_path) as log:
        assert len(log) == 2
        assert log.is_done("a.png", "s" * 64, key)
        assert not log.is_done("a.png", "x" * 64, key)  # input content changed
        assert not log.is_done("a.png", "s" * 64, JobKey("lcode", "w" * 64, "a blue car", "PNG"))
        assert not log.is_done("a.png", "s" * 64, JobKey("lcode", "v" * 64, "a red car", "PNG"))
        (tmp_path / "sub/b.png").write_bytes(b"1")  # output truncated by someone else
        assert not log.is_done("sub/b.png", "t" * 64, key)
        assert not log.is_done("c.png", "s" * 64, key)
    lines = (tmp_path / ".langcolor/records.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)  # compacted, cut line gone


def test_write_atomic_leaves_no_temporary_and_stale_ones_are_removed(tmp_path):
    write_atomic(tmp_path / "x/y.png", b"data")
    assert (tmp_path / "x/y.png").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["y.png"]
    stale = tmp_path / "x" / f".y.png{TMP_MARK}12345-abcd"
    stale.write_bytes(b"half an ima")
    keep = tmp_path / "x" / ".notes"
    keep.write_text("not ours")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and keep.exists()
