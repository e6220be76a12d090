"""A batch rides out a server restart: the server is SIGKILLed mid-run and started again on the same
ports; the same run logs the outage, carries on, and writes every output exactly once. A server
that stays away longer than the wait ends the call with an error that says so."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

from langcolor.client.remote import RemoteStages, ServerUnavailableError
from langcolor.server.launcher import TritonServer, free_ports

pytestmark = [pytest.mark.server, pytest.mark.slow]

KEY = "restart-" + "Rk7" * 8
CAPTION = "a red circle on a blue background"
TIMEOUT_S = 300


def _wait_for(path: Path, text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def _archive(root: Path, n: int) -> list[str]:
    root.mkdir(parents=True)
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    names = []
    for i in range(n):
        names.append(f"photo_{i:02d}.png")
        Image.fromarray(photos[i % len(photos)][i::6, ::6]).save(root / names[-1])
    return names


def _records(out: Path) -> list[str]:
    path = out / ".langcolor" / "records.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["output"] for line in lines if line.strip()]


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_batch_rides_out_a_server_restart(scheme, served_repository, tmp_path, caplog):
    src, out = tmp_path / "archive", tmp_path / "colour"
    names = _archive(src, 12)
    http, grpc, metrics = free_ports(3)
    port = grpc if scheme == "grpc" else http

    def server() -> TritonServer:  # the same ports and key each time
        return TritonServer(served_repository.path, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            log_path=tmp_path / "tritonserver.log", exit_timeout_s=1, api_key=KEY)

    cmd = [sys.executable, "-m", "langcolor.client.cli", "batch", src, "--output", out, "--default-caption", CAPTION,
           "--server", f"{scheme}://127.0.0.1:{port}", "--server-wait", "120", "--workers", "1", "--batch-size", "1",
           "--in-flight", "2", "--no-progress"]
    first = server().start()
    second = server()
    try:
        err = tmp_path / "batch.stderr"
        with err.open("w") as sink:  # a file, so the test can watch for a line while the run goes on
            proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=sink, text=True,
                                    env={**os.environ, "LANGCOLOR_API_KEY": KEY})
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and len(_records(out)) < 2:
            time.sleep(0.01)
        os.killpg(first.process.pid, signal.SIGKILL)  # no goodbye to the requests in flight
        first.stop()
        assert _wait_for(err, "went away", 60), err.read_text()  # the client saw the outage and waits
        done_while_down = len(_records(out))
        time.sleep(1.0)
        assert len(_records(out)) == done_while_down and proc.poll() is None  # nothing done, still waiting
        second.start()  # the same ports, a fresh process
        stdout, _ = proc.communicate(timeout=TIMEOUT_S)
        log = err.read_text()
        assert proc.returncode == 0, log
        assert 2 <= done_while_down < len(names)
        assert log.count("went away") == 1 and log.count("is back after") == 1, log  # once, with 2 in flight
        assert "stopped early" not in log and KEY not in log + stdout
        assert f"done {len(names)}, already done 0," in stdout
        assert sorted(_records(out)) == sorted(names)  # every output recorded exactly once
        assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
        assert not (out / "failures.jsonl").read_text().strip()

        # A server that does not come back within the wait: the call ends, saying so, and no sooner.
        with RemoteStages(f"{scheme}://127.0.0.1:{port}", endpoint=True, api_key=KEY, wait_s=3.0,
                          backoff_s=0.1) as remote:
            photo = (src / names[0]).read_bytes()
            assert remote.colorize_bytes(photo, CAPTION).data.startswith(b"\x89PNG")
            second.stop()
            caplog.set_level(logging.WARNING, logger="langcolor.client.remote")
            start = time.monotonic()
            with pytest.raises(ServerUnavailableError, match="did not come back within 3 s") as info:
                remote.colorize_bytes(photo, CAPTION)
            assert 3.0 <= time.monotonic() - start < 30
            assert KEY not in str(info.value) and KEY not in caplog.text
            assert "went away" in caplog.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        first.stop()
        second.stop()
