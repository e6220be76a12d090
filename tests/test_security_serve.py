"""``langcolor serve`` with key files and mutual TLS, as an operator starts it: the flags reach Triton,
the key reaches no output, clients with the CA's certificate get in, others are told why not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs import photo_png
from langcolor.client.connection import TlsFiles
from langcolor.client.remote import AuthenticationError, RemoteStages, TlsError
from langcolor.server.launcher import free_ports
from test_serve_cli import READY_TIMEOUT_S, _Output, _stop

pytestmark = pytest.mark.server

KEY = "cli-" + "Jw2" * 10
ADMIN = "admin-" + "Jw2" * 10
CAPTION = "a red circle on a blue background"


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def served(served_repository, tls_certs, tmp_path_factory):
    """``langcolor serve`` with an API key file, an admin key file and mutual TLS for gRPC."""
    tmp = tmp_path_factory.mktemp("serve_keys")
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "langcolor.client.cli", "serve", "--model-repository", str(served_repository.path),
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
           "--log-file", str(tmp / "tritonserver.log"), "--exit-timeout", "1",
           "--api-key-file", str(_secret(tmp / "api.key", KEY)), "--admin-key-file", str(_secret(tmp / "admin.key", ADMIN)),
           "--grpc-tls-cert", str(tls_certs.server_pem), "--grpc-tls-key", str(tls_certs.server_key),
           "--grpc-tls-client-ca", str(tls_certs.ca_pem)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = _Output(proc)
    try:
        assert out.wait_for("langcolor serve: ready", proc, READY_TIMEOUT_S), out.text
        yield proc, out, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", tmp / "tritonserver.log"
    finally:
        _stop(proc)


def test_serve_reports_what_is_protected_and_never_the_key(served):
    proc, out, http, grpc, _ = served
    text = out.text
    assert f"grpcs://{grpc} (TLS, client certificates required)" in text
    assert "API key: required" in text and "triton-grpc-protocol-authorization: Bearer KEY" in text
    assert "repository, logging, trace and shared memory take the admin key" in text
    assert "WARNING" not in text  # loopback
    assert KEY not in text and ADMIN not in text
    # Neither the key nor the admin key is in this process's arguments; both are in tritonserver's.
    assert KEY not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    triton = [c for c in children if b"tritonserver" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert triton and KEY in Path(f"/proc/{triton[0]}/cmdline").read_bytes().decode()


def test_mutual_tls_admits_only_the_ca_s_clients(served, tls_certs):
    _, _, _, grpc, _ = served
    good = TlsFiles(tls_certs.ca_pem, tls_certs.client_pem, tls_certs.client_key)
    with RemoteStages(f"grpcs://{grpc}", endpoint=True, api_key=KEY, tls=good) as remote:
        assert remote.colorize_bytes(photo_png(), CAPTION).data.startswith(b"\x89PNG")
    with pytest.raises(TlsError, match=r"asks for a client certificate .*sent no client certificate \(--tls-cert"):
        RemoteStages(f"grpcs://{grpc}", endpoint=True, api_key=KEY, tls=TlsFiles(tls_certs.ca_pem))
    rogue = TlsFiles(tls_certs.ca_pem, tls_certs.wrongclient_pem, tls_certs.wrongclient_key)
    with pytest.raises(TlsError, match="asks for a client certificate .*sent the client certificate given"):
        RemoteStages(f"grpcs://{grpc}", endpoint=True, api_key=KEY, tls=rogue)
    with pytest.raises(AuthenticationError, match="no API key was sent"):  # the certificate is not the key
        RemoteStages(f"grpcs://{grpc}", endpoint=True, tls=good)


def test_admin_key_file_opens_the_repository_api_and_the_api_key_does_not(served):
    from tritonclient.utils import InferenceServerException

    import tritonclient.http as httpclient

    _, _, http, _, _ = served
    client = httpclient.InferenceServerClient(http)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index(headers={"Authorization": f"Bearer {KEY}"})
        index = client.get_model_repository_index(headers={"Authorization": f"Bearer {ADMIN}"})
        assert "colorize" in {m["name"] for m in index}
    finally:
        client.close()
    with RemoteStages(f"http://{http}", endpoint=True, api_key=KEY) as remote:  # HTTP: the key, no TLS
        assert remote.colorize_bytes(photo_png(), CAPTION).data.startswith(b"\x89PNG")


def test_serve_stops_cleanly_and_its_log_holds_no_key(served):
    proc, out, _, _, log = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, out.text
    text = log.read_text(errors="replace")
    assert "successfully unloaded" in text, text[-2000:]  # the whole log, start to stop
    assert KEY not in text and ADMIN not in text and KEY not in out.text
