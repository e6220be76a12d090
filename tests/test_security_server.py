"""A real tritonserver started with an API key and gRPC TLS (the launcher, as ``langcolor serve`` starts
it): Triton's own refusals with no key and a wrong key over both protocols, health open; the
repository, logging and trace APIs closed to API-key holders; the ``access`` rows of the bad-input
table (no key, a wrong key, the right key, a wrong CA, the system's CAs, plaintext to the TLS port,
TLS to a plaintext one) through the client; the pixel cap crossed by one; and the key in no log, no
error message and no exception."""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

import bad_inputs as table
from bad_inputs import ACCEPTED, Access, photo_png
from langcolor.client.connection import TlsFiles
from langcolor.client.errors import LangcolorError
from langcolor.client.remote import AuthenticationError, RemoteStages, RequestRejectedError, TlsError
from langcolor.server.launcher import GrpcTls, TritonServer, free_ports
from test_bad_inputs import _check_message

pytestmark = pytest.mark.server

KEY = "serve-" + "Kx4" * 10
WRONG = "wrong-" + "Kx4" * 10
CAPTION = "a red circle on a blue background"
CAP = 128 * 128  # the pixel cap of this server's colorize endpoint: photo_png() is exactly at it


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def secured(served_repository, tls_certs, tmp_path_factory):
    """The served repository with its pixel cap lowered to CAP, behind an API key and gRPC TLS; the
    launcher's own log lines (debug included) are kept to be searched for the key."""
    from langcolor.client.errors import ModelNotFoundError
    from langcolor.server.launcher import TritonDist

    try:
        TritonDist.locate()
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("secured")
    repo = root / "repo"
    shutil.copytree(served_repository.path, repo)
    capped = 0
    for config in repo.glob("*/config.pbtxt"):
        text = config.read_text()
        new = re.sub(r'(key:\s*"max_pixels"\s*value\s*\{\s*string_value:\s*")\d+', rf"\g<1>{CAP}", text)
        capped += new != text
        config.write_text(new)
    assert capped >= 1, "the colorize endpoint's max_pixels parameter was not found"
    http, grpc, metrics = free_ports(3)
    collect = _Collect()
    launcher_log = logging.getLogger("langcolor.server.launcher")
    launcher_log.addHandler(collect)
    level, launcher_log.level = launcher_log.level, logging.DEBUG
    server = TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=root / "triton.log",
                          exit_timeout_s=1, log_verbose=1, api_key=KEY,
                          grpc_tls=GrpcTls(tls_certs.server_pem, tls_certs.server_key))
    try:
        with server:
            server.launcher_lines = collect.lines
            yield server
    finally:
        launcher_log.removeHandler(collect)
        launcher_log.level = level


def _url(server: TritonServer, protocol: str) -> str:
    e = server.endpoints
    return f"grpcs://{e.grpc_url}" if protocol == "grpc" else f"http://{e.http_url}"


def _raw_client(server: TritonServer, protocol: str, certs):
    if protocol == "grpc":
        import tritonclient.grpc as module

        return module, module.InferenceServerClient(server.endpoints.grpc_url, ssl=True,
                                                     root_certificates=str(certs.ca_pem))
    import tritonclient.http as module

    return module, module.InferenceServerClient(server.endpoints.http_url)


def _headers(protocol: str, key: str | None) -> dict | None:
    if key is None:
        return None
    return {("triton-grpc-protocol-authorization" if protocol == "grpc" else "Authorization"): f"Bearer {key}"}


def _colorize(module, client, protocol: str, image: bytes, key: str | None):
    inputs = []
    for name, value in (("IMAGE", image), ("CAPTION", CAPTION.encode())):
        t = module.InferInput(name, [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(t)
    kwargs = {"client_timeout": 120} if protocol == "grpc" else {}
    return client.infer("colorize", inputs, headers=_headers(protocol, key), **kwargs).as_numpy("COLORIZED")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_inference_needs_the_key_and_health_does_not(secured, tls_certs, protocol):
    module, client = _raw_client(secured, protocol, tls_certs)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("colorize")
        for key in (None, WRONG):
            for call in (lambda: _colorize(module, client, protocol, photo_png(), key),
                         lambda: client.get_server_metadata(headers=_headers(protocol, key)),
                         lambda: client.get_model_config("colorize", headers=_headers(protocol, key)),
                         lambda: client.get_inference_statistics(headers=_headers(protocol, key))):
                with pytest.raises(InferenceServerException, match="restricted") as info:
                    call()
                assert info.value.status() == ("StatusCode.UNAVAILABLE" if protocol == "grpc" else "403")
        png = _colorize(module, client, protocol, photo_png(), KEY)
        assert Image.open(io.BytesIO(bytes(png.reshape(-1)[0]))).size == (128, 128)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_repository_logging_and_trace_take_the_admin_key_only(secured, tls_certs, protocol):
    module, client = _raw_client(secured, protocol, tls_certs)
    admin = secured.admin_key.reveal()
    grpc_json = {"as_json": True} if protocol == "grpc" else {}
    try:
        for key in (None, KEY):  # nobody, not even a holder of the API key
            for call in (lambda: client.get_model_repository_index(headers=_headers(protocol, key), **grpc_json),
                         lambda: client.unload_model("lcode", headers=_headers(protocol, key)),
                         lambda: client.load_model("lcode", headers=_headers(protocol, key)),
                         lambda: client.get_log_settings(headers=_headers(protocol, key)),
                         lambda: client.update_log_settings({"log_verbose_level": 2}, headers=_headers(protocol, key)),
                         lambda: client.get_trace_settings(headers=_headers(protocol, key))):
                with pytest.raises(InferenceServerException, match="restricted"):
                    call()
        index = client.get_model_repository_index(headers=_headers(protocol, admin), **grpc_json)
        entries = index.get("models", []) if isinstance(index, dict) else index
        assert {m["name"] for m in entries if m.get("state") == "READY"} >= {"colorize", "lcode"}
        assert client.is_model_ready("lcode")  # the refused unload did nothing
    finally:
        client.close()


def _access_pairs() -> list:
    return [pytest.param((c, b), id=f"{c.name}@{b}") for c, b in table.pairs() if c.kind == "access"]


@pytest.mark.parametrize("pair", _access_pairs())
def test_access_table(pair, secured, tls_certs, request):
    """Each ``access`` row through the client: the error it must give (typed, at once, never retried)
    or a colorized photo; no key in any message or repr."""
    case, where = pair
    access: Access = case.make(None)
    protocol, expect = where.split("-")[1], case.expect_at(where)
    key = {"right": KEY, "wrong": WRONG, None: None}[access.key]
    cas = {"right": tls_certs.ca_pem, "wrong": tls_certs.wrongca_pem, None: None}
    if protocol == "grpc":
        # TLS to a plaintext port: the session's server, which has no TLS.
        server = request.getfixturevalue("triton_server") if access.plaintext_server else secured
        scheme = "grpcs" if access.tls else "grpc"
        tls = TlsFiles(cas[access.ca]) if access.tls and access.ca else None
        address = server.endpoints.grpc_url
    else:  # Triton's HTTP is plaintext; "TLS to a plaintext port" is https:// to it
        scheme = "https" if access.plaintext_server else "http"
        tls = TlsFiles(tls_certs.ca_pem) if access.plaintext_server else None
        address = secured.endpoints.http_url
    start = time.monotonic()
    try:
        if access.api == "repository":  # raw: the client has no repository call
            module, client = _raw_client(secured, protocol, tls_certs)
            try:
                client.get_model_repository_index(headers=_headers(protocol, key))
            finally:
                client.close()
        else:
            with RemoteStages(f"{scheme}://{address}", endpoint=True, api_key=key, tls=tls, backoff_s=5.0) as remote:
                assert remote.colorize_bytes(photo_png(), CAPTION).data.startswith(b"\x89PNG")
    except (LangcolorError, InferenceServerException) as e:
        message = e.message() if isinstance(e, InferenceServerException) else str(e)
        _check_message(message, case, where)
        if access.api != "repository":  # typed, and at once: a retry would have slept 5 s
            assert isinstance(e, (AuthenticationError, TlsError)), type(e)
            assert time.monotonic() - start < 5.0
        for secret in (KEY, WRONG):
            assert secret not in message and secret not in repr(e)
    else:
        assert expect == ACCEPTED, f"{case.name}@{where}: accepted, expected /{expect}/"


def test_tls_files_turn_tls_on_for_a_bare_address(secured, tls_certs):
    grpc = secured.endpoints.grpc_url
    with RemoteStages(grpc, endpoint=True, api_key=KEY, tls=TlsFiles(tls_certs.ca_pem)) as remote:
        assert remote.colorize_bytes(photo_png(), CAPTION).data.startswith(b"\x89PNG")


def _strip(pixels: int) -> bytes:
    """A real PNG of ``pixels`` x 1 (grey ramp)."""
    buf = io.BytesIO()
    Image.fromarray((np.arange(pixels) % 256).astype(np.uint8)[None, :]).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_pixel_cap_crossed_by_one(secured, tls_certs, protocol):
    tls = TlsFiles(tls_certs.ca_pem) if protocol == "grpc" else None
    with RemoteStages(_url(secured, protocol), endpoint=True, api_key=KEY, tls=tls) as remote:
        for image, size in ((photo_png(), (128, 128)), (_strip(CAP), (CAP, 1))):  # exactly at the cap
            assert Image.open(io.BytesIO(remote.colorize_bytes(image, CAPTION).data)).size == size
        with pytest.raises(RequestRejectedError, match=rf"{CAP + 1}x1 = {CAP + 1} pixels exceeds the limit of {CAP}"):
            remote.colorize_bytes(_strip(CAP + 1), CAPTION)


def test_the_key_is_in_no_log_and_no_message(secured, tls_certs, tmp_path):
    """Refused and accepted calls from the command line, then Triton's log (verbose), the launcher's
    log (debug) and every message: the key appears nowhere but in tritonserver's own arguments."""
    photo, out = tmp_path / "photo.png", tmp_path / "out.png"
    photo.write_bytes(photo_png())
    key_file = tmp_path / "key"
    key_file.write_text(WRONG)
    key_file.chmod(0o600)
    base = [sys.executable, "-m", "langcolor.client.cli", "-vv", "colorize", str(photo), "-c", CAPTION, "-o", str(out),
            "--server", _url(secured, "grpc"), "--tls-ca", str(tls_certs.ca_pem), "--api-key-file", str(key_file)]
    refused = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and not out.exists(), refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("langcolor colorize: error: Triton server at")
    assert "not the one it expects" in refused.stderr and "Traceback" not in refused.stderr
    key_file.write_text(KEY)
    accepted = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0 and out.is_file(), accepted.stderr
    http = subprocess.run(base[:-6] + ["--server", _url(secured, "http"), "--api-key-file", str(key_file)],
                          capture_output=True, text=True, timeout=120)
    assert http.returncode == 0, http.stderr

    triton_log = secured.log_path.read_text(errors="replace")
    texts = {"tritonserver log": triton_log, "launcher log": "\n".join(secured.launcher_lines),
             "refused CLI": refused.stdout + refused.stderr, "accepted CLI": accepted.stdout + accepted.stderr,
             "HTTP CLI": http.stdout + http.stderr, "log tail": secured.log_tail(400)}
    assert "command: " in texts["launcher log"] and "<hidden>" in texts["launcher log"]
    assert "/v2/models/colorize/infer" in triton_log  # verbose: it logs every request it was sent
    for where, text in texts.items():
        for secret in (KEY, WRONG, secured.admin_key.reveal()):
            assert secret not in text, f"a key in the {where}"
    # The one place the key is: tritonserver's argv (Triton 2.51 reads it nowhere else; documented).
    argv = Path(f"/proc/{secured.process.pid}/cmdline").read_bytes().decode()
    assert KEY in argv
