"""``langcolor colorize``: the happy path, one clear line for each user error, no partial output;
and, on the shipped model, that the colours follow the caption."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from langcolor.client.cli import main
from langcolor.client.lab import lab_to_rgb, rgb_to_lab
from langcolor.client.paths import default_model_repository

from test_runtime import write_toy_repository  # tests/ is on sys.path under pytest's default import mode

SHIPPED = default_model_repository()
shipped = (SHIPPED / "lcode" / "1" / "langcolor.json").is_file()


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A toy model repository (the default one may not be generated yet) and a grayscale photo."""
    repo = tmp_path / "repo"
    write_toy_repository(repo)
    photo = tmp_path / "photo.png"
    Image.fromarray(skimage.data.camera()[:121, :87]).save(photo)
    monkeypatch.chdir(tmp_path)
    return repo, photo


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["colorize", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_colorize_writes_output_with_input_l(env, capsys, tmp_path):
    repo, photo = env
    code, out, err = _run(capsys, photo, "--caption", "a red car on green grass", "-o", "out.png", "--model-repository", repo)
    assert code == 0, err
    assert "wrote out.png (87x121, in-process" in out
    rgb = np.asarray(Image.open(tmp_path / "out.png"))
    assert rgb.shape == (121, 87, 3)
    l_in = rgb_to_lab(np.repeat(skimage.data.camera()[:121, :87, None], 3, axis=2) / 255.0)[..., 0]
    assert np.abs(rgb_to_lab(rgb / 255.0)[..., 0] - l_in).max() < 0.27  # rounding bound, test_reconstruct
    assert np.abs(rgb_to_lab(rgb / 255.0)[..., 1:]).mean() > 1.0  # colour was added


def test_unknown_words_are_printed_once(env, capsys, caplog):
    repo, photo = env
    code, out, err = _run(capsys, photo, "-c", "a red zeppelin", "-o", "o.jpg", "--model-repository", repo)
    assert code == 0 and "ignored unknown words: zeppelin" in out
    shown = out + err + "".join(r.getMessage() for r in caplog.records)
    assert shown.count("zeppelin") == 1, shown  # the printed line, not also a log warning
    assert Image.open("o.jpg").format == "JPEG"


def test_png_compression_and_jpeg_quality_flags(env, capsys, tmp_path):
    repo, photo = env
    sizes, pixels = {}, {}
    for level in ("0", "9"):
        code, _, err = _run(capsys, photo, "-c", "a red car", "-o", f"p{level}.png", "--model-repository", repo,
                            "--png-compression", level)
        assert code == 0, err
        sizes[level] = (tmp_path / f"p{level}.png").stat().st_size
        pixels[level] = np.asarray(Image.open(tmp_path / f"p{level}.png"))
    assert sizes["0"] > sizes["9"] and np.array_equal(pixels["0"], pixels["9"])  # same pixels, other zlib level
    for q in ("30", "95"):
        assert _run(capsys, photo, "-c", "a red car", "-o", f"q{q}.jpg", "--model-repository", repo, "--jpeg-quality", q)[0] == 0
    assert (tmp_path / "q30.jpg").stat().st_size < (tmp_path / "q95.jpg").stat().st_size


def test_weights_hash_and_output_errors_are_public(env, tmp_path):
    from langcolor.client.colorizer import Colorizer
    from langcolor.client.outputs import check_output_path
    from langcolor.client.errors import LangcolorError, OutputError

    repo, _ = env
    col = Colorizer(model_repository=repo)
    assert col.weights_sha256 == col.bundle.manifest.weights_sha256 == "toy"  # the toy manifest's hash
    with pytest.raises(OutputError, match="is a directory"):
        check_output_path(tmp_path)
    assert issubclass(OutputError, LangcolorError)  # the CLI's one-line error, exit 2


def _junk_files(tmp: Path) -> dict[str, Path]:
    truncated_png = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(truncated_png, "PNG")
    truncated_jpg = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(truncated_jpg, "JPEG")
    files = {
        "empty.png": b"",
        "text.png": b"hello, I am not an image\n",
        "cut.png": truncated_png.getvalue()[:20_000],
        "cut.jpg": truncated_jpg.getvalue()[:5_000],
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return {name: tmp / name for name in files}


@pytest.mark.parametrize(
    "case,needle",
    [
        ("empty.png", "empty file"),
        ("text.png", "not an image"),
        ("cut.png", "truncated or corrupt"),
        ("cut.jpg", "truncated or corrupt"),
        ("missing.png", "no such file"),
        ("caption:", "caption is empty"),
        ("caption:   !!  ", "caption is empty"),
        ("caption:zeppelin quux", "no word of the caption is known"),
        ("caption:" + "red " * 40, "at most"),
        ("output:adir", "is a directory"),
        ("output:nofolder/out.png", "does not exist"),
        ("output:out.gif", "cannot write '.gif'"),
        ("output:/sys/out.png", "cannot write output '/sys/out.png': Permission denied"),  # even for root
        ("repo:missing", "does not exist"),
        ("repo:nostage", "stage 'decoder'"),
        ("pixels:1000", "exceeds the limit of 1000"),
    ],
)
def test_user_errors_give_one_line_and_exit_2(env, capsys, tmp_path, case, needle):
    repo, photo = env
    junk = _junk_files(tmp_path)
    (tmp_path / "adir").mkdir()
    caption, output, extra = "a red car", "out.png", []
    kind, _, value = case.partition(":")
    if case in junk or case == "missing.png":
        photo = tmp_path / case
    elif kind == "caption":
        caption = value
    elif kind == "output":
        output = value
    elif kind == "repo" and value == "missing":
        repo = tmp_path / "no-such-repo"
    elif kind == "repo":
        (repo / "lcode_decoder" / "1" / "model.onnx").unlink()
    elif kind == "pixels":
        extra = ["--max-pixels", value]
    code, out, err = _run(capsys, photo, "--caption", caption, "-o", output, "--model-repository", repo, *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("langcolor colorize: error:"), err
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "out.png").exists()  # no partial output
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder(env, capsys, tmp_path):
    repo, photo = env
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, _, err = _run(capsys, photo, "-c", "a red car", "-o", ro / "out.png", "--model-repository", repo)
    assert code == 2 and "not writable" in err


def test_console_script_prints_no_traceback(env, tmp_path):
    repo, _ = env
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    exe = Path(sys.executable).with_name("langcolor")
    proc = subprocess.run(
        [str(exe), "colorize", "junk.jpg", "-c", "a red car", "-o", "out.png", "--model-repository", str(repo)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "out.png").exists()


# ---------------------------------------------------------------- the shipped model
def _scene(size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A gray photo: a circle (left) and a square (right) on a background, and their interiors.

    The luminances say nothing of the colours; the interiors leave out the edge pixels, where the
    upsampled ab blends object and background.
    """
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size
    dist = np.hypot(yy - 0.5, xx - 0.28)
    circle, circle_in = dist < 0.17, dist < 0.13
    cheb = np.maximum(np.abs(yy - 0.5), np.abs(xx - 0.72))
    square, square_in = cheb < 0.15, cheb < 0.11
    L = np.full((size, size), 62.0)
    L[circle], L[square] = 40.0, 80.0
    gray = lab_to_rgb(np.stack([L, np.zeros_like(L), np.zeros_like(L)], axis=-1))
    return np.round(gray * 255).astype(np.uint8), circle_in, square_in


def _follow(col, pairs: list[tuple[str, str]]) -> tuple[dict, int]:
    """Colorize the scene for "a C1 circle and a C2 square" per pair; name each object's mean
    predicted ab by the nearest palette entry. -> ({pair: (circle colour, square colour)}, objects right).

    Judged on the network's ab (``ab_small``), as the model card's evaluation does, not on the
    displayed RGB: red at the square's L = 80 lies outside sRGB, so the output shows it with less
    chroma (same hue, same L), which the palette would call brown.
    """
    from langcolor.export.synthetic import PALETTE

    photo, circle, square = _scene()
    s = col.geometry.image_size
    centres_px = ((np.arange(s) + 0.5) * photo.shape[0] / s).astype(int)  # S x S pixel centres
    small = {name: m[np.ix_(centres_px, centres_px)] for name, m in (("circle", circle), ("square", square))}
    names = list(PALETTE)
    centres = np.array([PALETTE[n] for n in names])  # [K, 2]

    def nearest(ab_small, mask):  # [2, S, S], [S, S]
        ab = ab_small[:, mask].mean(axis=1)  # mean predicted colour inside the object
        return names[int(np.argmin(np.linalg.norm(centres - ab, axis=1)))]

    results = col.colorize_many([(photo, {"caption": f"a {c1} circle and a {c2} square"}) for c1, c2 in pairs])
    got = {
        pair: (nearest(r.ab_small, small["circle"]), nearest(r.ab_small, small["square"]))
        for pair, r in zip(pairs, results)
    }
    return got, sum((g[0] == p[0]) + (g[1] == p[1]) for p, g in got.items())


@pytest.mark.skipif(not shipped, reason=f"no shipped model repository at {SHIPPED} yet")
def test_shipped_model_follows_the_caption():
    """Every ordered pair of four colours on (circle, square): 12 captions, 24 objects.

    Each pair is also asked swapped, on the same gray pixels: a caption-blind network gives both
    the same colours, so it can be right on at most half of these objects. The bar is the issue's
    90% for seen pairs (the shipped model: 24/24; a random-weight export: 0/24).
    """
    from langcolor.client.colorizer import Colorizer
    from langcolor.export.synthetic import HELD_OUT

    colours = ["red", "green", "blue", "pink"]
    pairs = [(c1, c2) for c1 in colours for c2 in colours if c1 != c2]
    assert not any((("circle", c1) in HELD_OUT) or (("square", c2) in HELD_OUT) for c1, c2 in pairs)  # seen pairs
    col = Colorizer()
    got, right = _follow(col, pairs)
    print(f"caption following: {right}/{2 * len(pairs)}")
    assert right >= 0.9 * 2 * len(pairs), f"{right}/{2 * len(pairs)} objects follow the caption: {got}"


@pytest.mark.skipif(not shipped, reason=f"no shipped model repository at {SHIPPED} yet")
def test_shipped_model_couples_colour_to_object_on_held_out_pairs():
    """Colour-object pairs never seen in training ("purple circle", "yellow square", "orange circle"),
    next to a seen pair: the colour must land on the object it is said of, not just anywhere.
    Bar 75% (9/12; the shipped model: 11/12, its evaluation on held-out scenes: 77%)."""
    from langcolor.client.colorizer import Colorizer
    from langcolor.export.synthetic import HELD_OUT

    pairs = [("purple", "green"), ("orange", "blue"), ("red", "yellow"), ("purple", "yellow"), ("orange", "yellow"), ("green", "yellow")]
    assert all((("circle", c1) in HELD_OUT) or (("square", c2) in HELD_OUT) for c1, c2 in pairs)
    col = Colorizer()
    got, right = _follow(col, pairs)
    print(f"held-out coupling: {right}/{2 * len(pairs)}")
    assert right >= 0.75 * 2 * len(pairs), f"{right}/{2 * len(pairs)} objects follow the caption: {got}"


@pytest.mark.skipif(not shipped, reason=f"no shipped model repository at {SHIPPED} yet")
def test_cli_default_model_colours_a_real_photo(tmp_path, capsys, monkeypatch):
    """`langcolor colorize` with no model flags: the shipped repository, a real photo, L kept."""
    monkeypatch.chdir(tmp_path)
    photo = skimage.data.camera()[:301, :257]  # grayscale, odd size
    Image.fromarray(photo).save("camera.jpg", quality=95)
    code, out, err = _run(capsys, "camera.jpg", "-c", "a red circle on a green background", "-o", "camera_out.png")
    assert code == 0, err
    rgb = np.asarray(Image.open("camera_out.png"))
    assert rgb.shape == (301, 257, 3)
    l_in = rgb_to_lab(np.asarray(Image.open("camera.jpg").convert("RGB")) / 255.0)[..., 0]
    assert np.abs(rgb_to_lab(rgb / 255.0)[..., 0] - l_in).max() < 0.27
    chroma = np.hypot(*np.moveaxis(rgb_to_lab(rgb / 255.0)[..., 1:], -1, 0))
    assert chroma.mean() > 10.0  # coloured, not gray (a gray photo has chroma 0)
