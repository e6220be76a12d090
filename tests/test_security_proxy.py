"""The nginx TLS proxy of server_config/nginx.conf.tmpl in front of a real tritonserver: HTTPS and
gRPC over TLS reach the models, the CA is checked, and the request body cap is crossed by one byte.

Needs an nginx binary: ``$LANGCOLOR_NGINX``, or ``nginx`` on PATH (CI unpacks Debian's package:
``.ci/run``); skipped, saying so, where there is none. As root, nginx runs as ``nobody``."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bad_inputs import photo_jpeg, photo_png
from langcolor.client.connection import TlsFiles
from langcolor.client.remote import RemoteStages, RequestTooLargeError, TlsError
from langcolor.server.launcher import free_ports

pytestmark = pytest.mark.server

TEMPLATE = Path(__file__).resolve().parents[1] / "server_config" / "nginx.conf.tmpl"
MAX_BODY = 24 * 1024  # "24k": photo_jpeg() (13 kB) fits in one request, photo_png() (34 kB) does not
CAPTION = "a red circle on a blue background"


def _nginx() -> str:
    for candidate in (os.environ.get("LANGCOLOR_NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("nginx not found: set $LANGCOLOR_NGINX, or install Debian's nginx (CI: .ci/run unpacks it)")


def _wait_listening(ports: list[int], proc: subprocess.Popen, error_log: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited {proc.returncode}: {error_log.read_text(errors='replace')}")
        if all(socket.socket().connect_ex(("127.0.0.1", p)) == 0 for p in ports):
            return
        time.sleep(0.1)
    raise AssertionError(f"nginx did not listen on {ports}")


@pytest.fixture(scope="session")  # the session's scope: it is set up before the session's server
def nginx() -> str:
    return _nginx()


@pytest.fixture(scope="module")
def proxy(nginx, triton_server, tls_certs):  # nginx first: a missing binary skips before a server starts
    """nginx from the template, unprivileged, in front of the session's tritonserver."""
    run = Path(tempfile.mkdtemp(prefix="langcolor-nginx-"))  # pytest's own folders are closed to nobody
    shutil.copy(tls_certs.server_pem, run / "server.pem")
    shutil.copy(tls_certs.server_key, run / "server.key")
    https, grpcs = free_ports(2)
    e = triton_server.endpoints
    fields = {"RUN": str(run), "CERT": str(run / "server.pem"), "KEY": str(run / "server.key"),
              "LISTEN_HTTPS": f"127.0.0.1:{https}", "LISTEN_GRPCS": f"127.0.0.1:{grpcs}",
              "TRITON_HTTP": e.http_url, "TRITON_GRPC": e.grpc_url, "MAX_BODY": f"{MAX_BODY // 1024}k"}
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
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait_listening([https, grpcs], proc, run / "error.log")
        yield f"127.0.0.1:{https}", f"127.0.0.1:{grpcs}"
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(run, ignore_errors=True)


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_tls_through_the_proxy_reaches_the_models(proxy, tls_certs, scheme):
    address = proxy[0] if scheme == "https" else proxy[1]
    with RemoteStages(f"{scheme}://{address}", endpoint=True, tls=TlsFiles(tls_certs.ca_pem)) as remote:
        assert remote.colorize_bytes(photo_jpeg(), CAPTION).data.startswith(b"\x89PNG")
        with pytest.raises(RequestTooLargeError, match="larger than the server accepts"):  # 34 kB > 24k
            remote.colorize_bytes(photo_png(), CAPTION)
        assert remote.colorize_bytes(photo_jpeg(), CAPTION).data.startswith(b"\x89PNG")  # and the next one is fine
    with pytest.raises(TlsError, match="not trusted"):
        RemoteStages(f"{scheme}://{address}", endpoint=True, tls=TlsFiles(tls_certs.wrongca_pem))
    plain = "http" if scheme == "https" else "grpc"
    with pytest.raises(TlsError, match=rf"{address} speaks TLS and this client does not: use {scheme}://"):
        RemoteStages(f"{plain}://{address}", endpoint=True)


def _post(address: str, ca: Path, size: int) -> tuple[int, bytes]:
    """What nginx (or Triton behind it) answers to an inference POST of exactly ``size`` bytes."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=60, context=ssl.create_default_context(cafile=str(ca)))
    try:
        conn.request("POST", "/v2/models/colorize/infer", body=b"{" + b" " * (size - 2) + b"}",
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_request_body_cap_crossed_by_one_byte(proxy, tls_certs):
    status, body = _post(proxy[0], tls_certs.ca_pem, MAX_BODY)
    assert status != 413 and b"inputs" in body, (status, body)  # through to Triton, which parsed it: no inputs
    status, body = _post(proxy[0], tls_certs.ca_pem, MAX_BODY + 1)
    assert status == 413 and b"inputs" not in body  # stopped at the proxy; Triton never saw it
