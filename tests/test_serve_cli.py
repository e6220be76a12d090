"""``langcolor serve`` as a user runs it: a subprocess on free loopback ports, stopped with SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from langcolor.client.remote import RemoteStages
from langcolor.client.runtime import ModelBundle
from langcolor.server.launcher import free_ports, repository_models

pytestmark = pytest.mark.server

LANGCOLOR = [sys.executable, "-m", "langcolor.client.cli"]
READY_TIMEOUT_S = 240.0


class _Output:
    """Collects a subprocess's combined output on a thread, so waiting never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, proc: subprocess.Popen, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in ln for ln in self.lines):
                return True
            if proc.poll() is not None:
                self._thread.join(5)
                return any(text in ln for ln in self.lines)
            time.sleep(0.1)
        return False

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _serve(repo: Path, ports: list[int], tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, _Output]:
    http, grpc, metrics = ports
    cmd = LANGCOLOR + [
        "serve", "--model-repository", str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
        "--metrics-port", str(metrics), "--log-file", str(tmp_path / "tritonserver.log"), *flags,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return proc, _Output(proc)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_answers_and_stops_on_sigterm(served_repository, tmp_path):
    """With its serving knobs overridden: the stages and the fused chain load with them."""
    ports = free_ports(3)
    proc, out = _serve(served_repository.path, ports, tmp_path, "--intra-op-threads", "2", "--queue-delay-us", "100")
    try:
        assert out.wait_for("langcolor serve: ready", proc, READY_TIMEOUT_S), out.text
        line = next(ln for ln in out.lines if "langcolor serve: intra_op_threads=2, queue_delay_us=100 for" in ln)
        tunable = _tunable_models(served_repository.path)
        assert f"for {len(tunable)} model(s): {', '.join(tunable)}" in line, line
        # Endpoints are printed and bound to loopback only.
        assert f"http://127.0.0.1:{ports[0]}" in out.text and f"127.0.0.1:{ports[1]}" in out.text
        bundle = ModelBundle.load(served_repository.path)
        g = bundle.geometry
        L = np.full((1, 1, g.image_size, g.image_size), 50.0, dtype=np.float32)  # [1, 1, S, S]
        tokens = bundle.tokenizer.encode_batch(["a red circle"])  # [1, T]
        with RemoteStages(f"127.0.0.1:{ports[1]}", "grpc", assets=bundle.manifest.assets) as remote:
            ab = remote.infer({"L": L, "TOKENS": tokens})["AB"]
        assert ab.shape == (1, 2, g.image_size, g.image_size) and np.isfinite(ab).all()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, out.text
    finally:
        _stop(proc)
    assert "stopping (SIGTERM)" in out.text
    # Nothing is left listening: the server and its Python-backend stubs are gone.
    assert not any(_port_open(p) for p in ports[:2])


def _tunable_models(repo: Path) -> list[str]:
    """The models with serving knobs: the langcolor backend's stages and fused chains."""
    from langcolor.export.triton_config import parse

    roles = {m: parse((repo / m / "config.pbtxt").read_text()).parameters.get("role") for m in repository_models(repo)}
    return [m for m, role in roles.items() if role is not None and role.string_value in ("stage", "chain")]


def test_retuned_repository_changes_only_the_knobs_and_copies_nothing_large(served_repository, tmp_path):
    from langcolor.export.triton_config import parse
    from langcolor.server.launcher import retuned_repository

    src = served_repository.path
    before = {p: p.read_bytes() for p in src.rglob("config.pbtxt")}
    changed = retuned_repository(src, tmp_path / "view", intra_op_threads=0, instances=2)
    assert changed == _tunable_models(src) and "lcode_encoder" in changed
    assert repository_models(tmp_path / "view") == repository_models(src)
    for name in changed:
        cfg = parse((tmp_path / "view" / name / "config.pbtxt").read_text())
        assert cfg.parameters["intra_op_threads"].string_value == "0" and cfg.instance_group[0].count == 2
    assert (tmp_path / "view" / "lcode_encoder" / "1").is_symlink()
    assert (tmp_path / "view" / "colorize" / "config.pbtxt").read_bytes() == (src / "colorize" / "config.pbtxt").read_bytes()
    assert {p: p.read_bytes() for p in src.rglob("config.pbtxt")} == before  # the exported repository is untouched


def test_serve_names_a_model_with_a_corrupt_onnx_file(served_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(served_repository.path, repo)
    (repo / "lcode_decoder" / "1" / "model.onnx").write_bytes(b"this is not an onnx protobuf")
    proc, out = _serve(repo, free_ports(3), tmp_path)
    try:
        code = proc.wait(READY_TIMEOUT_S)
    finally:
        _stop(proc)
    out._thread.join(5)
    assert code != 0, out.text
    failed = [ln for ln in out.lines if "failed to load" in ln]
    assert any("'lcode_decoder'" in ln for ln in failed), out.text
    # Triton's reason reaches the user, not just "failed".
    line = next(ln for ln in failed if "'lcode_decoder'" in ln)
    assert "INVALID_PROTOBUF" in line or "protobuf" in line.lower(), line
    # The ensemble that needs the decoder is named too, so the user knows what is down.
    assert any("'lcode'" in ln for ln in failed), out.text


def test_serve_names_an_ensemble_whose_stage_is_missing(served_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(served_repository.path, repo)
    shutil.rmtree(repo / "lcode_fusion")
    proc, out = _serve(repo, free_ports(3), tmp_path)
    try:
        code = proc.wait(READY_TIMEOUT_S)
    finally:
        _stop(proc)
    out._thread.join(5)
    assert code != 0, out.text
    line = next((ln for ln in out.lines if "model 'lcode' failed to load" in ln), "")
    assert "lcode_fusion" in line, out.text  # Triton's reason names the missing step


def test_client_gets_model_not_ready_from_a_server_with_a_failed_model(served_repository, tmp_path):
    from langcolor.client.remote import ModelNotReadyError
    from langcolor.server.launcher import TritonServer

    repo = tmp_path / "repo"
    shutil.copytree(served_repository.path, repo)
    (repo / "lcode_encoder" / "1" / "model.onnx").write_bytes(b"\x00" * 64)
    http, grpc, metrics = free_ports(3)
    server = TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                          log_path=tmp_path / "tritonserver.log", allow_failed=True)
    with server:
        fused = {"lcode_impl"} if (repo / "lcode_impl").is_dir() else set()  # the fused chain loads the same file
        assert {m.name for m in server.failed} == {"lcode_encoder", "lcode", *fused}
        for protocol, url in (("grpc", server.endpoints.grpc_url), ("http", server.endpoints.http_url)):
            start = time.monotonic()
            with pytest.raises(ModelNotReadyError, match="'lcode' is not ready"):
                RemoteStages(url, protocol, retries=1, backoff_s=0.01)
            assert time.monotonic() - start < 30  # an answer, not a hang
