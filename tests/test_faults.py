"""Faults: a client and a server that disagree, a server that goes away, a model that failed to load.

What is already covered elsewhere, and not repeated here:
- server SIGKILLed under a gRPC batch, clear stop, rerun finishes each image once: test_batch.py
- RemoteStages retrying with backoff through a server restart: test_server.py
- corrupt ONNX / missing stage named by ``langcolor serve``, ``ModelNotReadyError`` for the
  ensemble: test_serve_cli.py

Here: a tokenizer or model (geometry) mismatch is refused before any pixel reaches the server
(Triton's own statistics prove no request was executed), at the Python API and both commands; a
server that is not there fails a batch clearly after visible retries and writes nothing; the same
kill-and-rerun over HTTP (its transport errors are classified separately from gRPC's); and the
``colorize`` endpoint answers, rather than hangs, when the ensemble behind it failed to load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from langcolor.client.errors import LangcolorError, TokenizerMismatchError
from langcolor.client.remote import ModelMismatchError, RemoteStages
from langcolor.client.runtime import ModelBundle
from langcolor.client.spec import MANIFEST_FILE, TOKENIZER_FILE, ModelManifest, caption_geometry
from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.server.launcher import TritonServer, free_port, free_ports

pytestmark = pytest.mark.server

CAPTION = "a red circle on a blue background"
TIMEOUT_S = 300


def _executed(protocol: str, url: str) -> dict[str, int]:
    """Requests Triton executed per model, once the figures settle: Triton records a request's
    statistics after sending its response, so an earlier test's last requests may still land."""
    counts = _read_executed(protocol, url)
    for _ in range(50):
        time.sleep(0.2)
        again = _read_executed(protocol, url)
        if again == counts:
            return counts
        counts = again
    raise AssertionError(f"Triton's statistics keep moving: {counts}")


def _read_executed(protocol: str, url: str) -> dict[str, int]:
    """Requests Triton executed (succeeded or failed) per model, from its statistics extension."""
    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(url)
        raw = client.get_inference_statistics(as_json=True)
    else:
        import tritonclient.http as module

        client = module.InferenceServerClient(url)
        raw = client.get_inference_statistics()
    client.close()
    counts = {}
    for s in raw["model_stats"]:
        stats = s.get("inference_stats", {})
        counts[s["name"]] = sum(int(stats.get(k, {}).get("count", 0)) for k in ("success", "fail"))
    return counts


def _client_repository(served: Path, tmp: Path, *, tokenizer: bool = False, image_size: int | None = None) -> Path:
    """A client-side copy of the served manifest and tokenizer, with one thing changed."""
    repo = tmp / "client_repository"
    shutil.copytree(served, repo)
    version = repo / "lcode" / "1"
    manifest = ModelManifest.load(version / MANIFEST_FILE)
    if tokenizer:  # one more word: a different vocabulary, a different hash, the same geometry
        tok = CaptionTokenizer.from_file(version / TOKENIZER_FILE)
        words = sorted(w for w in tok.vocabulary if not w.startswith("["))[:-1] + ["zebra"]
        new = CaptionTokenizer.train([" ".join(words)], tok.max_tokens)
        new.save(version / TOKENIZER_FILE)
        manifest = dataclasses.replace(manifest, assets={TOKENIZER_FILE: new.sha256})
    if image_size is not None:
        g = manifest.geometry
        smaller = caption_geometry(g.family, image_size, g.max_tokens, g.vocab_size, g.feature_shape)
        manifest = dataclasses.replace(manifest, geometry=smaller)
    (version / MANIFEST_FILE).write_text(manifest.to_json())
    ModelBundle.load(repo, stages=False)  # the client copy itself is consistent
    return repo


def _photo(path: Path) -> Path:
    Image.fromarray(skdata.astronaut()[::4, ::4]).save(path)
    return path


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "langcolor.client.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("mismatch", ["tokenizer", "geometry"])
def test_mismatch_is_refused_before_any_pixel_is_sent(mismatch, served_repository, triton_server, protocol,
                                                      server_url, tmp_path):
    if mismatch == "tokenizer":
        repo, error, words = _client_repository(served_repository.path, tmp_path, tokenizer=True), \
            TokenizerMismatchError, "tokenizer mismatch"
    else:
        repo, error, words = _client_repository(served_repository.path, tmp_path, image_size=32), \
            ModelMismatchError, "image size 64"
    before = _executed(protocol, server_url)

    # RemoteStages, given what the client holds.
    bundle = ModelBundle.load(repo, stages=False)
    with pytest.raises(error, match=words):
        RemoteStages(server_url, protocol, assets=bundle.manifest.assets, geometry=bundle.geometry)

    # The Python API: refused at construction or, at the latest, before the request leaves.
    from langcolor.client.colorizer import Colorizer

    with pytest.raises(LangcolorError) as info:
        Colorizer(server=server_url, protocol=protocol, model_repository=repo, via="ensemble").colorize(
            _photo(tmp_path / "p.png"), CAPTION)
    assert re.search(r"tokenizer|shape|image size|mismatch", str(info.value)), info.value

    # Both commands: one line, exit 2, nothing written.
    out = tmp_path / "out.png"
    proc = _cli("colorize", tmp_path / "p.png", "-c", CAPTION, "-o", out, "--server", server_url,
                "--protocol", protocol, "--model-repository", repo, "--via", "ensemble")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and not out.exists(), proc.stderr
    archive = tmp_path / "archive"
    archive.mkdir()
    _photo(archive / "a.png")
    proc = _cli("batch", archive, "--output", tmp_path / "colour", "--default-caption", CAPTION, "--server",
                server_url, "--protocol", protocol, "--model-repository", repo, "--no-progress", "--via", "ensemble")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert not list((tmp_path / "colour").rglob("*.png"))
    if mismatch == "tokenizer":  # refused on connecting: not even the output folder is made
        assert not (tmp_path / "colour").exists()

    after = _executed(protocol, server_url)
    assert {m: after[m] - before.get(m, 0) for m in after if after[m] != before.get(m, 0)} == {}, \
        "a request reached the server"


def test_batch_with_no_server_fails_clearly_after_retries(tmp_path, served_repository):
    archive, out = tmp_path / "archive", tmp_path / "colour"
    archive.mkdir()
    _photo(archive / "a.png")
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    proc = _cli("batch", archive, "--output", out, "--default-caption", CAPTION, "--server", url,
                "--model-repository", served_repository.path, "--no-progress")
    assert time.monotonic() - start < TIMEOUT_S
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "retry 1/3" in proc.stderr and "retry 3/3" in proc.stderr  # backoff was tried, and is visible
    assert "unreachable after 4 attempts" in proc.stderr.splitlines()[-1], proc.stderr
    assert not out.exists()  # not even an empty output folder


def _archive(root: Path, n: int) -> list[str]:
    root.mkdir(parents=True)
    names = []
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    for i in range(n):
        name = f"photo_{i:02d}.png"
        Image.fromarray(photos[i % len(photos)][i::4, ::4]).save(root / name)
        names.append(name)
    return names


def _records(out: Path) -> list[dict]:
    path = out / ".langcolor" / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.slow
def test_server_killed_under_an_http_batch_then_rerun_finishes_every_image_once(tmp_path, served_repository):
    src, out = tmp_path / "archive", tmp_path / "colour"
    names = _archive(src, 14)
    http, grpc, metrics = free_ports(3)

    def server() -> TritonServer:
        return TritonServer(served_repository.path, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            log_path=tmp_path / "tritonserver.log", exit_timeout_s=1)

    cmd = ["batch", src, "--output", out, "--default-caption", CAPTION, "--server", f"127.0.0.1:{http}",
           "--protocol", "http", "--model-repository", served_repository.path, "--workers", "1",
           "--batch-size", "1", "--in-flight", "1", "--no-progress"]
    with server() as first:
        proc = subprocess.Popen([sys.executable, "-m", "langcolor.client.cli", *map(str, cmd)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and len(_records(out)) < 2:
            time.sleep(0.01)
        os.killpg(first.process.pid, signal.SIGKILL)  # no goodbye to in-flight requests
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 1, stderr
    assert "stopped early" in stderr and "unreachable" in stderr, stderr
    done_before = {r["output"] for r in _records(out)}
    assert 2 <= len(done_before) < len(names)
    # The images were not at fault: none is reported failed, none half-written.
    assert not (out / "failures.jsonl").read_text().strip()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]

    with server():
        rerun = _cli(*cmd)
    assert rerun.returncode == 0, rerun.stderr
    assert f"already done {len(done_before)}," in rerun.stdout
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert outputs == sorted(names)
    assert sorted(r["output"] for r in _records(out)) == sorted(names)  # each exactly once


def test_colorize_endpoint_answers_when_its_ensemble_failed(served_repository, tmp_path):
    from tritonclient.utils import InferenceServerException

    repo = tmp_path / "repo"
    shutil.copytree(served_repository.path, repo)
    (repo / "lcode_encoder" / "1" / "model.onnx").write_bytes(b"\x08\x07 not a model")
    http, grpc, metrics = free_ports(3)
    server = TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                          log_path=tmp_path / "tritonserver.log", allow_failed=True)
    photo = _photo(tmp_path / "p.png")
    with server:
        assert "colorize" not in {m.name for m in server.failed}
        for protocol, url in (("grpc", server.endpoints.grpc_url), ("http", server.endpoints.http_url)):
            if protocol == "grpc":
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
            client = module.InferenceServerClient(url)
            image = module.InferInput("IMAGE", [1, 1], "BYTES")
            image.set_data_from_numpy(np.array([[photo.read_bytes()]], dtype=object))
            caption = module.InferInput("CAPTION", [1, 1], "BYTES")
            caption.set_data_from_numpy(np.array([[CAPTION.encode()]], dtype=object))
            start = time.monotonic()
            kwargs = {"client_timeout": 60} if protocol == "grpc" else {}
            with pytest.raises(InferenceServerException) as info:
                client.infer("colorize", [image, caption], **kwargs)
            client.close()
            assert time.monotonic() - start < 60  # an answer, not a hang
            assert "lcode" in info.value.message(), info.value.message()

            # The command line says which model is not ready, in one line.
            out = tmp_path / f"out_{protocol}.png"
            proc = _cli("colorize", photo, "-c", CAPTION, "-o", out, "--server", url, "--protocol", protocol,
                        "--model-repository", repo)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
            assert "'lcode' is not ready" in proc.stderr and not out.exists(), proc.stderr

