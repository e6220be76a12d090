"""Every row of ``tests/bad_inputs.py`` at every boundary that can receive it.

Each bad input must give a clear error that names the problem (the row's regex), leave the process
or server up (the next good request succeeds), and leave no partial output behind. Rows marked
ACCEPTED are awkward but valid inputs and must succeed. Real parts only: the shipped model
repository in-process, the ``langcolor`` command as a subprocess, and a real tritonserver.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bad_inputs as table
from bad_inputs import ACCEPTED, KNOWN_DEFECTS, SKIPPED, BadInput, Context, photo_png
from langcolor.client.errors import LangcolorError

TIMEOUT_S = 120  # a hang fails the test instead of stalling the suite


def _pairs(*boundaries: str, kinds: tuple[str, ...] | None = None) -> list:
    out = []
    for c, b in table.pairs():
        if b in boundaries and (kinds is None or c.kind in kinds):
            defect = KNOWN_DEFECTS.get((c.name, b))
            marks = [pytest.mark.xfail(reason=defect, strict=True)] if defect else []
            out.append(pytest.param((c, b), marks=marks, id=f"{c.name}@{b}"))
    return out


def _check_message(message: str, case: BadInput, where: str) -> None:
    expect = case.expect_at(where)
    assert expect not in (ACCEPTED, SKIPPED), (case.name, where, message)
    assert re.search(expect, message, re.IGNORECASE | re.DOTALL), f"{case.name}@{where}: {message!r} !~ /{expect}/"
    assert not re.search(r"internal error|Traceback|^\w+(Error|Exception): ", message), f"{case.name}@{where}: {message!r}"
    assert len(message) < 2000, f"{case.name}@{where}: the message echoes its input ({len(message)} chars)"


def _leftovers(folder: Path) -> list[str]:
    """Temporary or partial files anywhere under ``folder``."""
    return [p.name for p in folder.rglob("*") if p.is_file() and (".tmp" in p.name or p.name.startswith("."))]


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def ctx(served_repository) -> Context:
    from langcolor.client.spec import ModelManifest

    g = ModelManifest.load(served_repository.path / "lcode" / "1" / "langcolor.json").geometry
    config = (served_repository.path / "lcode" / "config.pbtxt").read_text()
    max_batch = int(re.search(r"max_batch_size:\s*(\d+)", config).group(1))
    return Context(g.image_size, g.max_tokens, g.vocab_size, max_batch)


@pytest.fixture(scope="module")
def colorizer(served_repository):
    from langcolor.client.colorizer import Colorizer

    return Colorizer(model_repository=served_repository.path, intra_op_threads=1)


@pytest.fixture(scope="module")
def reference_input(served_repository) -> tuple[str, object]:
    """(family, input field) of a served family that takes an image beside the photo; else the rows skip."""
    from langcolor.client import families

    for name in families.names():
        if (served_repository.path / name / "1" / "langcolor.json").is_file():
            for field in families.get(name).inputs:
                if field.kind == families.IMAGE:
                    return name, field
    pytest.skip("the served repository has no family that takes a reference image")


@pytest.fixture(scope="module")
def reference_colorizer(served_repository, reference_input):
    from langcolor.client.colorizer import Colorizer

    return Colorizer(model=reference_input[0], model_repository=served_repository.path, intra_op_threads=1)


def _good_reference() -> bytes:
    return table.REFERENCES[-1].make(None)  # the colour JPEG row, ACCEPTED


def _reference_values(case: BadInput, ctx: Context, field) -> dict:
    ref = case.make(ctx)
    return {} if ref is None else {field.name: ref}


def _image_size(data: bytes) -> tuple[int, int]:
    from langcolor.client.imageio import load_image

    return load_image(data).size


# ============================================================================ Python API
@pytest.mark.parametrize("pair", _pairs("python"))
def test_python_api(pair, ctx, colorizer, tmp_path, request):
    case, where = pair
    expect = case.expect_at(where)
    if case.kind == "reference":
        _python_reference(case, where, ctx, request)
        return
    try:
        if case.kind == "image":
            data = case.make(ctx)
            outcome = colorizer.colorize(data, ctx.good_caption)
            assert outcome.rgb.shape[:2] == _image_size(data)[::-1]
        elif case.kind == "caption":
            outcome = colorizer.colorize(photo_png(), case.make(ctx))
            assert outcome.rgb.shape == (128, 128, 3)
        elif case.kind == "source":
            source = case.make(ctx, tmp_path)
            outcome = colorizer.colorize(str(source) if isinstance(source, Path) else source, ctx.good_caption)
        elif case.kind == "array":
            pixels = case.make(ctx)
            outcome = colorizer.colorize(pixels, ctx.good_caption)
            assert outcome.rgb.shape == (*pixels.shape[:2], 3)
        elif case.kind == "tensor":
            L, tokens = case.make(ctx)
            ab = colorizer.infer({"L": L, "TOKENS": tokens})["AB"]
            assert ab.shape == (L.shape[0], 2, ctx.image_size, ctx.image_size) and np.isfinite(ab).all()
        elif case.kind == "output":
            result = colorizer.colorize(photo_png(), ctx.good_caption)
            target = case.make(ctx, tmp_path)
            before = set(target.parent.iterdir()) if target.parent.is_dir() else set()
            try:
                colorizer.save(result, target)
            finally:
                if target.parent.is_dir():  # nothing new beside the target, not even a temporary
                    assert set(target.parent.iterdir()) == before, case.name
        else:
            raise AssertionError(case.kind)
    except LangcolorError as e:
        _check_message(str(e), case, where)
    else:
        assert expect == ACCEPTED, f"{case.name}: accepted, expected an error matching /{expect}/"
    # The same Colorizer goes on: the next good request succeeds.
    assert colorizer.colorize(photo_png(), ctx.good_caption).rgb.shape == (128, 128, 3)


def _python_reference(case: BadInput, where: str, ctx: Context, request) -> None:
    rc = request.getfixturevalue("reference_colorizer")
    _, field = request.getfixturevalue("reference_input")
    try:
        outcome = rc.colorize(photo_png(), **_reference_values(case, ctx, field))
        assert outcome.rgb.shape == (128, 128, 3)
    except LangcolorError as e:
        _check_message(str(e), case, where)
    else:
        assert case.expect_at(where) == ACCEPTED, f"{case.name}: accepted, expected /{case.expect_at(where)}/"
    assert rc.colorize(photo_png(), **{field.name: _good_reference()}).rgb.shape == (128, 128, 3)


# ============================================================================ langcolor colorize
def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "langcolor.client.cli", "colorize", *args]
    return subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, cwd=cwd)


@pytest.mark.parametrize("pair", _pairs("cli"))
def test_command_line(pair, ctx, served_repository, tmp_path, request):
    case, where = pair
    expect = case.expect_at(where)
    photo, caption, out = tmp_path / "photo.png", ctx.good_caption, tmp_path / "out.png"
    photo.write_bytes(photo_png())
    if case.kind == "image":
        photo.write_bytes(case.make(ctx))
    elif case.kind == "caption":
        caption = case.make(ctx)  # bytes go to argv as they are (invalid UTF-8 included)
    elif case.kind == "source":
        photo = case.make(ctx, tmp_path)
    elif case.kind == "output":
        out = case.make(ctx, tmp_path)
    condition = ["-c", caption]
    if case.kind == "reference":
        family, field = request.getfixturevalue("reference_input")
        condition = ["--model", family]
        if case.make(ctx) is not None:
            ref = tmp_path / "reference.img"
            ref.write_bytes(case.make(ctx))
            condition += [f"--{field.name}", ref]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = _cli(photo, *condition, "-o", out, "--model-repository", served_repository.path, cwd=tmp_path)
    stderr = proc.stderr.decode("utf-8", "replace")
    if expect == ACCEPTED:
        assert proc.returncode == 0, stderr
        assert _png_size(out.read_bytes()) == Image.open(photo).size
        return
    assert proc.returncode == 2, f"{case.name}: exit {proc.returncode}\n{stderr}"
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("langcolor colorize: error: "), stderr
    _check_message(stderr, case, where)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "partial output left behind"


# ============================================================================ batch
@pytest.fixture(scope="module")
def image_and_caption_batch(ctx, colorizer, tmp_path_factory):
    """One run_batch over a manifest holding every image and caption row (text captions), plus good images."""
    from langcolor.client.batch import BatchOptions, run_batch

    root = tmp_path_factory.mktemp("bad_batch")
    src, out = root / "archive", root / "colour"
    src.mkdir()
    rows = []
    for case in table.cases("batch", ("image", "caption")):
        if case.kind == "caption" and not isinstance(case.make(ctx), str):
            continue  # refuses the whole manifest: tested as a manifest of its own below
        name = f"{case.name}.png"
        (src / name).write_bytes(case.make(ctx) if case.kind == "image" else photo_png())
        rows.append({"path": name, "caption": case.make(ctx) if case.kind == "caption" else ctx.good_caption})
    for i in range(3):  # good images around the bad ones
        (src / f"good{i}.png").write_bytes(photo_png())
        rows.append({"path": f"good{i}.png", "caption": ctx.good_caption})
    manifest = src / "list.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_batch(BatchOptions(manifest, out, progress=False, batch_size=4), colorizer)
    return summary, out


@pytest.mark.parametrize("pair", _pairs("batch", kinds=("image", "caption")))
def test_batch_image_and_caption(pair, ctx, image_and_caption_batch, served_repository, tmp_path):
    case, where = pair
    expect = case.expect_at(where)
    if case.kind == "caption" and not isinstance(case.make(ctx), str):
        caption = case.make(ctx)  # bytes go raw into a CSV, anything else into JSON
        manifest = tmp_path / "archive" / ("list.csv" if isinstance(caption, bytes) else "list.jsonl")
        manifest.parent.mkdir()
        (manifest.parent / "photo.png").write_bytes(photo_png())
        if isinstance(caption, bytes):
            manifest.write_bytes(b"path,caption\nphoto.png," + caption + b"\n")
        else:
            manifest.write_text(json.dumps({"path": "photo.png", "caption": caption}) + "\n")
        proc = _batch_cli(manifest, tmp_path / "out", served_repository)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        _check_message(proc.stderr, case, where)
        assert not (tmp_path / "out").exists()
        return
    _check_batch_line(case, where, *image_and_caption_batch)


def _check_batch_line(case: BadInput, where: str, summary, out: Path) -> None:
    """The line of ``case`` in a batch of bad lines among good ones: done, skipped or failed alone."""
    expect = case.expect_at(where)
    name = f"{case.name}.png"
    reasons = {f.input: f.reason for f in summary.failures}
    assert summary.aborted is None
    for i in range(3):
        assert (out / f"good{i}.png").is_file() and f"good{i}.png" not in reasons
    if expect == ACCEPTED:
        assert name not in reasons and (out / name).is_file(), reasons.get(name)
    elif expect == SKIPPED:
        assert name in summary.skipped_inputs and name not in reasons and not (out / name).exists()
    else:
        assert name in reasons, f"{case.name}: not reported as failed"
        _check_message(reasons[name], case, where)
        assert not (out / name).exists()
    assert not _leftovers(out.parent / "archive") and not [p for p in out.rglob("*.tmp*")]


@pytest.fixture(scope="module")
def reference_batch(ctx, reference_input, reference_colorizer, tmp_path_factory):
    """One run_batch over a manifest whose lines name every reference row's image, plus good lines."""
    from langcolor.client.batch import BatchOptions, run_batch

    family, field = reference_input
    root = tmp_path_factory.mktemp("bad_reference_batch")
    src, out = root / "archive", root / "colour"
    (src / "refs").mkdir(parents=True)
    (src / "refs" / "good.jpg").write_bytes(_good_reference())
    rows = []
    for case in table.cases("batch", ("reference",)):
        (src / f"{case.name}.png").write_bytes(photo_png())
        row = {"path": f"{case.name}.png"}
        if case.make(ctx) is not None:
            (src / "refs" / f"{case.name}.img").write_bytes(case.make(ctx))
            row[field.name] = f"refs/{case.name}.img"
        rows.append(row)
    for i in range(3):
        (src / f"good{i}.png").write_bytes(photo_png())
        rows.append({"path": f"good{i}.png", field.name: "refs/good.jpg"})
    manifest = src / "list.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_batch(BatchOptions(manifest, out, progress=False, batch_size=4, model=family), reference_colorizer)
    return summary, out


@pytest.mark.parametrize("pair", _pairs("batch", kinds=("reference",)))
def test_batch_reference(pair, reference_batch):
    _check_batch_line(*pair, *reference_batch)


def _batch_cli(source: Path, output: Path, repo, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "langcolor.client.cli", "batch", str(source), "--output", str(output),
           "--model-repository", str(repo.path), "--no-progress", "--workers", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("pair", _pairs("batch", kinds=("manifest", "output", "source")))
def test_batch_job(pair, ctx, served_repository, tmp_path):
    case, where = pair
    expect = case.expect_at(where)
    src, out = tmp_path / "archive", tmp_path / "colour"
    src.mkdir()
    (src / "good.png").write_bytes(photo_png())
    (tmp_path / "outside.png").write_bytes(photo_png())
    (src / "link.png").symlink_to(tmp_path / "outside.png")
    source, extra = src, ["--default-caption", ctx.good_caption]
    if case.kind == "manifest":
        name, content = case.make(ctx, src)
        source, extra = src / name, []
        source.write_bytes(content)
    elif case.kind == "output":
        out = case.make(ctx, tmp_path)
    elif case.kind == "source":
        source = case.make(ctx, tmp_path)
    existed = out.exists()
    proc = _batch_cli(source, out, served_repository, *extra)
    report = out / "failures.jsonl"
    failures = report.read_text() if report.is_file() and out != Path("/sys") else ""
    if expect == ACCEPTED:
        assert proc.returncode == 0, proc.stderr
        assert (out / "good.png").is_file()
        return
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
    _check_message(proc.stderr + failures, case, where)
    if proc.returncode == 2:  # the job was refused before any work: no output folder made
        assert out.exists() == existed
    else:  # one item failed alone, the good image is done
        assert (out / "good.png").is_file()
    if out.is_dir() and out != Path("/sys"):
        assert not [p for p in out.rglob("*.tmp*")]


# ============================================================================ Triton
def _raw(protocol: str, url: str, model: str, inputs, output: str):
    """A raw tritonclient request (no client-side checks): the server's own answer."""
    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(url)
    else:
        import tritonclient.http as module

        client = module.InferenceServerClient(url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    try:
        tensors = []
        for name, array, dtype in inputs:
            t = module.InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array)
            tensors.append(t)
        kwargs = {"client_timeout": TIMEOUT_S} if protocol == "grpc" else {}
        return client.infer(model, tensors, **kwargs).as_numpy(output)
    finally:
        client.close()


def _caption_bytes(caption: str | bytes) -> bytes:
    return caption if isinstance(caption, bytes) else caption.encode("utf-8", "surrogatepass")


def _server_inputs(case: BadInput, ctx: Context, reference=None) -> tuple[str, list, str]:
    b = lambda x: np.array([[x]], dtype=np.object_)  # noqa: E731  [1, 1] BYTES
    if case.kind == "reference":
        family, field = reference
        inputs = [("IMAGE", b(photo_png()), "BYTES"), ("MODEL", b(family.encode()), "BYTES")]
        if case.make(ctx) is not None:
            inputs.append((field.name.upper(), b(case.make(ctx)), "BYTES"))
        return "colorize", inputs, "COLORIZED"
    if case.kind == "tensor":
        L, tokens = case.make(ctx)
        return "lcode", [("L", L, "FP32" if L.dtype == np.float32 else "FP64"),
                         ("TOKENS", tokens, "INT64" if tokens.dtype == np.int64 else "INT32")], "AB"
    if case.kind == "request":
        return "colorize", case.make(ctx), "COLORIZED"
    image = case.make(ctx) if case.kind == "image" else photo_png()
    caption = _caption_bytes(case.make(ctx)) if case.kind == "caption" else ctx.good_caption.encode()
    return "colorize", [("IMAGE", b(image), "BYTES"), ("CAPTION", b(caption), "BYTES")], "COLORIZED"


@pytest.mark.server
@pytest.mark.parametrize("pair", _pairs("lcode-grpc", "lcode-http", "colorize-grpc", "colorize-http"))
def test_server(pair, ctx, triton_server, request):
    from tritonclient.utils import InferenceServerException

    case, where = pair
    expect = case.expect_at(where)
    protocol = where.split("-")[1]
    url = triton_server.endpoints.grpc_url if protocol == "grpc" else triton_server.endpoints.http_url
    reference = request.getfixturevalue("reference_input") if case.kind == "reference" else None
    model, inputs, output = _server_inputs(case, ctx, reference)
    try:
        result = _raw(protocol, url, model, inputs, output)
    except InferenceServerException as e:
        _check_message(str(e.message()), case, where)
    else:
        assert expect == ACCEPTED, f"{case.name}@{where}: accepted, expected /{expect}/"
        if model == "colorize":
            image = dict((n, a) for n, a, _ in inputs)["IMAGE"].reshape(-1)[0]
            assert _png_size(bytes(result.reshape(-1)[0])) == _image_size(bytes(image))
        else:
            assert np.isfinite(result).all()
    # The server is up and the next good request on each model succeeds.
    assert triton_server.process.poll() is None, "tritonserver died"
    good = [("L", ctx.good_l(), "FP32"), ("TOKENS", ctx.good_tokens(), "INT64")]
    assert _raw(protocol, url, "lcode", good, "AB").shape == (1, 2, ctx.image_size, ctx.image_size)
    b = lambda x: np.array([[x]], dtype=np.object_)  # noqa: E731
    png = _raw(protocol, url, "colorize", [("IMAGE", b(photo_png()), "BYTES"),
                                         ("CAPTION", b(ctx.good_caption.encode()), "BYTES")], "COLORIZED")
    assert _png_size(bytes(png.reshape(-1)[0])) == (128, 128)


def test_table_is_complete():
    """The issue's list is all there, and there are at least 30 rows."""
    names = {c.name for c in table.TABLE}
    required = {"empty-file", "text-file", "truncated-jpeg", "truncated-png", "decompression-bomb", "zero-size",
                "one-pixel", "gray-16-bit", "cmyk-jpeg", "l-wrong-size", "l-float64", "l-nan", "l-inf", "l-above-100",
                "token-over-vocab", "token-negative", "empty-caption", "whitespace-caption", "huge-caption",
                "invalid-utf8", "control-chars", "dotdot-path", "absolute-path", "output-is-directory",
                "output-read-only"}
    assert required <= names, required - names
    assert len(table.TABLE) >= 30
    assert all(set(c.boundaries) <= set(table.BOUNDARIES) for c in table.TABLE)


def test_bad_inputs_md_is_generated_from_the_table():
    text = (Path(table.__file__).with_name("BAD_INPUTS.md")).read_text()
    assert text == table.markdown(), "run: .venv/bin/python tests/bad_inputs.py"


# ============================================================================ security defaults
def test_serve_binds_to_loopback_unless_told(monkeypatch):
    import argparse

    from langcolor.server import serve
    from langcolor.server.launcher import TritonServer

    monkeypatch.delenv("LANGCOLOR_HOST", raising=False)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert parser.parse_args([]).host == "127.0.0.1"
    cmd = TritonServer("model_repository").command(Path("/backends"), Path("/bin/tritonserver"))
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in cmd, cmd


class _RunsCode:
    """Unpickling this would run a shell command (what a hostile checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_checkpoint_loading_does_not_unpickle_code(tmp_path):
    torch = pytest.importorskip("torch")
    from langcolor.client.errors import ModelNotFoundError
    from langcolor.export.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "langcolor", "config": _RunsCode(marker)}, path)
    with pytest.raises(ModelNotFoundError, match="cannot read checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
