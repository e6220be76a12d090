"""Two `langcolor serve` replicas behind one address: Debian's nginx with server_config/nginx-lb.conf.tmpl
(gRPC over HTTP/2 with grpc_pass, and HTTP). The client runs unchanged against the one address;
each replica's own /metrics shows it took a share of the requests; SIGKILLing one replica mid-batch
loses no output. Everything on 127.0.0.1, checked with ``ss``.

Needs an nginx binary (``$LANGCOLOR_NGINX``, or ``nginx`` on PATH; CI unpacks Debian's package in
.ci/run); skipped, saying so, where there is none.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from test_batch import _outputs, _records, _small_archive, _write_captions, write_bulk
from test_security_proxy import _nginx, _wait_listening

pytestmark = [pytest.mark.server, pytest.mark.slow]

TEMPLATE = Path(__file__).resolve().parents[1] / "server_config" / "nginx-lb.conf.tmpl"
READY_TIMEOUT_S = 300.0


class Replica:
    """One `langcolor serve` process on its own loopback ports (it starts tritonserver in a session
    of its own, which is what a kill takes down)."""

    def __init__(self, repo: Path, key_file: Path, workdir: Path, name: str):
        from langcolor.server.launcher import free_ports

        self.http, self.grpc, self.metrics = free_ports(3)
        self.log = workdir / f"{name}.serve.log"
        cmd = [sys.executable, "-m", "langcolor.client.cli", "serve", "--model-repository", str(repo),
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
               "--api-key-file", str(key_file), "--log-file", str(workdir / f"{name}.tritonserver.log")]
        self.process = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"langcolor serve exited: {self.log.read_text(errors='replace')[-3000:]}")
            try:  # no key: health is open, as the Kubernetes probes need it
                if _status(f"http://127.0.0.1:{self.http}/v2/health/ready") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"replica not ready in {READY_TIMEOUT_S:.0f} s: {self.log.read_text()[-3000:]}")

    def triton_pid(self) -> int | None:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    comm = Path(f"/proc/{entry}/comm").read_text().strip()
                except OSError:
                    continue
                if int(stat[1]) == self.process.pid and comm.startswith("tritonserver"):
                    return int(entry)
        return None

    def successes(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=30) as r:
            text = r.read().decode()
        found = re.findall(r'^nv_inference_request_success\{model="colorize",version="1"\} (\d+)', text, re.M)
        return int(found[0]) if found else 0

    def kill(self) -> None:
        """SIGKILL the server itself (no drain, in-flight requests cut), then its wrapper."""
        pid = self.triton_pid()
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
        self.process.wait(60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Triton drains, then langcolor serve exits 0
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                pid = self.triton_pid()
                if pid is not None:
                    os.killpg(pid, signal.SIGKILL)
                self.process.kill()
                self.process.wait()


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
        except OSError:
            continue
    return found


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
    return host.startswith("127.") or host == "::1"


def _off_loopback(pids: set[int]) -> list[str]:
    """Sockets of ``pids`` (``ss -tanp``) that listen on or talk to anything but loopback."""
    out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        if not {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
            continue
        local, peer = line.split()[3:5]
        if not _loopback(local) or not (peer in ("*:*", "0.0.0.0:*", "[::]:*") or _loopback(peer)):
            bad.append(line)
    return bad


def _start_nginx(nginx: str, replicas: list[Replica]) -> tuple[subprocess.Popen, Path, int, int]:
    from langcolor.server.launcher import free_ports

    run = Path(tempfile.mkdtemp(prefix="langcolor-nginx-lb-"))  # pytest's folders are closed to nobody
    lb_http, lb_grpc = free_ports(2)
    fields = {"RUN": str(run), "LISTEN_GRPC": f"127.0.0.1:{lb_grpc}", "LISTEN_HTTP": f"127.0.0.1:{lb_http}",
              "GRPC_SERVERS": " ".join(f"server 127.0.0.1:{r.grpc} max_fails=1 fail_timeout=10s;" for r in replicas),
              "HTTP_SERVERS": " ".join(f"server 127.0.0.1:{r.http} max_fails=1 fail_timeout=10s;" for r in replicas),
              "MAX_BODY": "16m"}
    text = TEMPLATE.read_text()
    for name, value in fields.items():
        text = text.replace("{{" + name + "}}", value)
    assert "{{" not in "".join(line.split("#")[0] for line in text.splitlines()), "a field left unfilled"
    (run / "nginx.conf").write_text(text)
    cmd = [nginx, "-p", str(run), "-c", str(run / "nginx.conf"), "-e", str(run / "error.log"), "-g", "daemon off;"]
    if os.geteuid() == 0:  # never run a proxy as root
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop to nobody for nginx")
        shutil.chown(run, "nobody")
        for f in run.iterdir():
            shutil.chown(f, "nobody")
        cmd = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    checked = subprocess.run([*cmd[:-2], "-t"], capture_output=True, text=True, timeout=30, env=env)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    _wait_listening([lb_http, lb_grpc], proc, run / "error.log")
    return proc, run, lb_http, lb_grpc


def _batch(src: Path, out: Path, manifest: Path, server: str, key_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "langcolor.client.cli", "batch", str(src), "--output", str(out), "--captions",
            str(manifest), "--server", server, "--api-key-file", str(key_file), "--no-progress", *extra]


def test_two_replicas_behind_nginx_share_the_work_and_a_killed_one_loses_nothing(tmp_path, served_repository):
    from langcolor.client.errors import ModelNotFoundError
    from langcolor.server.launcher import TritonDist

    nginx = _nginx()  # skips, saying why, where there is none
    try:
        TritonDist.locate()
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    key_file = tmp_path / "api-key"
    key_file.write_text("replicas-test-key-" + "x" * 24 + "\n")
    key_file.chmod(0o600)
    src = tmp_path / "archive"
    captions = _small_archive(src) | write_bulk(src, 30)
    manifest = tmp_path / "captions.csv"
    _write_captions(manifest, captions)
    expected = {Path(rel).with_suffix(".png").as_posix() for rel in captions}

    replicas = [Replica(served_repository.path, key_file, tmp_path, name) for name in ("a", "b")]
    proc = run = None
    try:
        for replica in replicas:
            replica.wait_ready()
        proc, run, lb_http, lb_grpc = _start_nginx(nginx, replicas)
        assert _status(f"http://127.0.0.1:{lb_http}/v2/health/ready") == 200  # through the proxy, no key

        # The same command as against one server, at the one address; both protocols.
        for scheme, port in (("http", lb_http), ("grpc", lb_grpc)):
            before = [r.successes() for r in replicas]
            out = tmp_path / f"spread-{scheme}"
            done = subprocess.run(_batch(src, out, manifest, f"{scheme}://127.0.0.1:{port}", key_file),
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            assert _outputs(out) == expected
            shares = [r.successes() - b for r, b in zip(replicas, before)]
            assert sum(shares) >= len(captions) and min(shares) >= len(captions) // 4, (scheme, shares)

        pids = {proc.pid, *_children(proc.pid), *(r.triton_pid() for r in replicas)}  # nginx's workers too
        assert None not in pids and len(pids) >= 4
        assert not _off_loopback(pids), _off_loopback(pids)

        # One replica SIGKILLed mid-batch: nginx sends its requests (those cut too) to the other.
        out = tmp_path / "killed"
        running = subprocess.Popen(_batch(src, out, manifest, f"grpc://127.0.0.1:{lb_grpc}", key_file,
                                          "--workers", "1", "--server-wait", "60"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        records = out / ".langcolor" / "records.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and running.poll() is None:
            if records.exists() and records.read_text().count("\n") >= 4:
                break
            time.sleep(0.02)
        assert running.poll() is None, "the batch ended before a replica could be killed"
        survivor_before = replicas[1].successes()
        replicas[0].kill()
        stdout, stderr = running.communicate(timeout=600)
        assert running.returncode == 0, stderr[-3000:]
        assert "done " in stdout and "failed 0 " in stdout, stdout
        assert _outputs(out) == expected  # every image, no temporaries
        written = [r["output"] for r in _records(out)]
        assert sorted(written) == sorted(expected)  # each once
        assert not (out / "failures.jsonl").read_text()
        assert replicas[1].successes() > survivor_before  # the rest went to the one left
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if run is not None:
            shutil.rmtree(run, ignore_errors=True)
        for replica in replicas:
            replica.stop()
