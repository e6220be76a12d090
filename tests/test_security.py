"""Keys, TLS settings, limits and the exposure warning, without a server: what the flags turn into,
how the client reads Triton's refusals, and what never prints. The same with real servers:
test_security_server.py (the launcher), test_security_serve.py (``langcolor serve``, mutual TLS),
test_security_proxy.py (nginx in front) and test_security_restart.py (a batch across a restart)."""

from __future__ import annotations

import io
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from langcolor.client import families
from langcolor.client.connection import ApiKey, TlsFiles, api_key_from, connection_options, read_key_file
from langcolor.client.errors import ImageError, LangcolorError
from langcolor.client.remote import _is_transient, parse_url, probe_tls
from langcolor.server.launcher import GrpcTls, TritonServer, free_port
from langcolor.server.serve import exposure_warnings

KEY = "k3y-" + "Zq9" * 8  # 28 characters of the bearer-token alphabet


def key_file(folder: Path, text: str = KEY, mode: int = 0o600) -> Path:
    path = folder / "api.key"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


# ------------------------------------------------------------------------------ the key itself
def test_api_key_never_prints():
    key = ApiKey(KEY)
    holders = [key, [key], {"k": key}, TlsFiles()]
    for text in (repr(key), str(key), f"{key}", repr(holders), "%s" % (key,)):
        assert KEY not in text
    assert key.reveal() == KEY and key.bearer() == f"Bearer {KEY}"
    with pytest.raises(TypeError):  # no copy of it through pickle
        import pickle

        pickle.dumps(key)


@pytest.mark.parametrize("bad, words", [("short-key", "at least 16"), ("two words " * 3, "one token"),
                                        ("line\nbreak" * 3, "one token"), ("é" * 20, "one token")])
def test_a_weak_or_unsendable_key_is_refused_without_quoting_it(bad, words):
    with pytest.raises(LangcolorError, match=words) as info:
        ApiKey(bad)
    assert bad.strip() not in str(info.value)


def test_key_file_must_be_private(tmp_path):
    assert read_key_file(key_file(tmp_path)) == ApiKey(KEY)  # the trailing newline is not part of the key
    for mode in (0o644, 0o604, 0o620):
        with pytest.raises(LangcolorError, match=r"open to other users.*chmod 600") as info:
            read_key_file(key_file(tmp_path, mode=mode))
        assert KEY not in str(info.value)
    assert read_key_file(key_file(tmp_path, mode=0o640)) == ApiKey(KEY)  # group-readable: a Kubernetes fsGroup mount
    with pytest.raises(LangcolorError, match="No such file"):
        read_key_file(tmp_path / "missing.key")


def test_key_comes_from_the_file_then_the_environment(tmp_path):
    path = key_file(tmp_path)
    other = "Other" + KEY
    assert api_key_from(path, {"LANGCOLOR_API_KEY": other}) == ApiKey(KEY)
    assert api_key_from(None, {"LANGCOLOR_API_KEY_FILE": str(path), "LANGCOLOR_API_KEY": other}) == ApiKey(KEY)
    assert api_key_from(None, {"LANGCOLOR_API_KEY": other}) == ApiKey(other)
    assert api_key_from(None, {}) is None


def test_tls_and_key_flags_need_a_server(tmp_path):
    import argparse

    from langcolor.client.connection import add_server_flags

    p = argparse.ArgumentParser()
    add_server_flags(p)
    with pytest.raises(LangcolorError, match="go with --server"):
        connection_options(p.parse_args(["--api-key-file", str(key_file(tmp_path))]))
    with pytest.raises(LangcolorError, match="both --tls-cert and --tls-key"):
        connection_options(p.parse_args(["--server", "grpcs://127.0.0.1:1", "--tls-cert", str(tmp_path / "c.pem")]))
    (tmp_path / "ca.pem").write_text("x")
    opts = connection_options(p.parse_args(["--server", "grpcs://h:1", "--tls-ca", str(tmp_path / "ca.pem"),
                                            "--api-key-file", str(key_file(tmp_path))]))
    assert opts["tls"] == TlsFiles(tmp_path / "ca.pem") and opts["api_key"] == ApiKey(KEY)


def test_url_schemes():
    assert parse_url("grpcs://h:1") == ("h:1", "grpc", True)
    assert parse_url("https://h:1/") == ("h:1", "http", True)
    assert parse_url("http://h:1") == ("h:1", "http", False)
    assert parse_url("h:1", "http") == ("h:1", "http", None)
    with pytest.raises(LangcolorError, match="grpcs://"):
        parse_url("ftp://h:1")


# ------------------------------------------------------------------------------ Triton's refusals, read
def _grpc_error(message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status="StatusCode.UNAVAILABLE")


@pytest.mark.parametrize("error, transient", [
    # Triton's restricted-protocol refusal comes as UNAVAILABLE: a retry cannot fix a key
    (_grpc_error("This protocol is restricted, expecting header 'triton-grpc-protocol-authorization'"), False),
    (InferenceServerException(msg="This API is restricted, expecting header 'Authorization'", status="403"), False),
    (_grpc_error("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed "
                 "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
                 "CERTIFICATE_VERIFY_FAILED: self signed certificate in certificate chain"), False),
    (_grpc_error("... Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL "
                 "routines:OPENSSL_internal:WRONG_VERSION_NUMBER"), False),
    (ssl.SSLCertVerificationError("certificate verify failed"), False),
    (InferenceServerException(msg="Received http2 header with status: 413", status="StatusCode.UNKNOWN"), False),
    # a server that is down or restarting
    (_grpc_error("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused"), True),
    (_grpc_error("Socket closed"), True),
    (ConnectionRefusedError(111, "Connection refused"), True),
    (ssl.SSLEOFError("EOF occurred in violation of protocol"), True),
    (InferenceServerException(msg="Received http2 header with status: 502", status="502"), True),
])
def test_refused_keys_and_certificates_are_not_retried(error, transient):
    assert _is_transient(error) is transient


def test_probe_tells_a_closed_port():
    assert probe_tls(f"127.0.0.1:{free_port()}") is None


# ------------------------------------------------------------------------------ the server's flags
def test_launcher_puts_every_api_but_health_behind_the_keys(tmp_path, caplog):
    (tmp_path / "cert.pem").write_text("x")
    key = key_file(tmp_path)
    server = TritonServer("model_repository", api_key=KEY, grpc_tls=GrpcTls(tmp_path / "cert.pem", key))
    cmd = server.command(Path("/backends"), Path("/bin/tritonserver"))
    admin = server.admin_key.reveal()
    assert admin != KEY and len(admin) >= 32  # random, held only by this process
    assert f"--http-restricted-api=inference,metadata,model-config,statistics:Authorization=Bearer {KEY}" in cmd
    assert f"--grpc-restricted-protocol=inference,metadata,model-config,statistics:authorization=Bearer {KEY}" in cmd
    assert ("--http-restricted-api=model-repository,logging,trace,shared-memory:Authorization=Bearer "
            f"{admin}") in cmd
    assert not any("health" in c for c in cmd)  # probes stay open
    assert "--grpc-use-ssl=true" in cmd and f"--grpc-server-key={key.resolve()}" in cmd
    assert not any("mutual" in c for c in cmd)
    assert KEY not in server.redact(" ".join(cmd)) and admin not in server.redact(" ".join(cmd))
    assert server.admin_headers == {"Authorization": f"Bearer {admin}"}
    # Without a key nothing changes: loopback serving as before.
    plain = TritonServer("model_repository").command(Path("/b"), Path("/t"))
    assert not any("restricted" in c or "ssl" in c for c in plain)


def test_mutual_tls_flags_and_private_key_mode(tmp_path):
    for name in ("cert.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    key = key_file(tmp_path)
    flags = GrpcTls(tmp_path / "cert.pem", key, tmp_path / "ca.pem").flags()
    assert "--grpc-use-ssl-mutual=true" in flags and f"--grpc-root-cert={(tmp_path / 'ca.pem').resolve()}" in flags
    key.chmod(0o644)
    with pytest.raises(LangcolorError, match="chmod 600"):
        GrpcTls(tmp_path / "cert.pem", key)


def test_keys_are_not_handed_to_the_models(monkeypatch):
    from langcolor.server.launcher import TritonDist, server_environment

    monkeypatch.setenv("LANGCOLOR_API_KEY", KEY)
    monkeypatch.setenv("LANGCOLOR_API_KEY_FILE", "/run/secrets/key")
    dist = TritonDist(Path("/t"), Path("/l"), Path("/p"), Path("/s"))
    env = server_environment(dist)
    assert "LANGCOLOR_API_KEY" not in env and "LANGCOLOR_API_KEY_FILE" not in env


# ------------------------------------------------------------------------------ the exposure warning
def test_exposure_warnings():
    assert exposure_warnings("127.0.0.1", False, False) == [] == exposure_warnings("127.0.0.5", False, False)
    assert exposure_warnings("localhost", False, False) == [] == exposure_warnings("::1", False, False)
    bare = " ".join(exposure_warnings("0.0.0.0", False, False))
    assert "WITHOUT AN API KEY" in bare and "--api-key-file" in bare and "--insecure" in bare
    keyed = " ".join(exposure_warnings("10.1.2.3", True, True))
    assert "HTTP" in keyed and "plaintext" in keyed and "gRPC on" not in keyed
    assert "gRPC on serving.example is plaintext" in " ".join(exposure_warnings("serving.example", True, False))


def _serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``langcolor serve`` with a repository that does not exist: it warns, then stops before binding."""
    cmd = [sys.executable, "-m", "langcolor.client.cli", "serve", "--model-repository", "/nonexistent", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_serve_warns_off_loopback_unless_insecure(tmp_path):
    loud = _serve("--host", "0.0.0.0")
    assert loud.returncode == 2 and "no model repository" in loud.stderr, loud.stderr
    assert "WARNING: serving on 0.0.0.0 WITHOUT AN API KEY" in loud.stderr
    quiet = _serve("--host", "0.0.0.0", "--insecure")
    assert quiet.returncode == 2 and "WARNING" not in quiet.stderr
    local = _serve()
    assert local.returncode == 2 and "WARNING" not in local.stderr
    keyed = _serve("--host", "0.0.0.0", "--api-key-file", str(key_file(tmp_path)))
    assert "WITHOUT AN API KEY" not in keyed.stderr and "gRPC on 0.0.0.0 is plaintext" in keyed.stderr
    assert KEY not in keyed.stderr + keyed.stdout
    leaky = _serve("--api-key-file", str(key_file(tmp_path, mode=0o644)))
    assert leaky.returncode == 2 and "chmod 600" in leaky.stderr and KEY not in leaky.stderr


def test_serve_help_names_every_limit():
    text = subprocess.run([sys.executable, "-m", "langcolor.client.cli", "serve", "--help"], capture_output=True,
                          text=True, timeout=60).stdout
    for words in ("request body", "client_max_body_size", "image pixels", "50000000", "caption length",
                  "reference image", "--api-key-file", "--grpc-tls-cert", "--insecure"):
        assert words in text, words


# ------------------------------------------------------------------------------ image inputs' pixel cap
def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), 128, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_every_image_input_has_the_pixel_cap(tmp_path):
    """A family's image input (a reference photo) at the cap passes; one pixel over is refused from its
    header, naming the input, whether it is given as bytes, a path or an array."""
    from langcolor.client.colorizer import check_image_inputs

    fields = (families.InputField("reference", families.IMAGE, "a photo to take colours from"),
              families.InputField("caption", families.TEXT, "words"))
    cap = 64 * 64
    (tmp_path / "over.png").write_bytes(_png(cap + 1, 1))
    check_image_inputs(fields, {"reference": _png(64, 64), "caption": "x" * (cap + 1)}, cap)
    check_image_inputs(fields, {"reference": np.zeros((64, 64, 3), np.uint8)}, cap)
    for over in (_png(cap + 1, 1), str(tmp_path / "over.png"), np.zeros((1, cap + 1), np.uint8)):
        with pytest.raises(ImageError, match=rf"reference: {cap + 1}x1 = {cap + 1} pixels exceeds the limit of {cap}"):
            check_image_inputs(fields, {"reference": over}, cap)
    check_image_inputs(fields, {"reference": b"not an image"}, cap)  # left to the family to name


def test_the_thin_client_checks_image_inputs_before_sending():
    from langcolor.client.colorizer import Colorizer

    family = families.Family(
        name="reftest", title="", summary="", configs={"tiny": None}, config_from_dict=dict,
        geometry=lambda c, a: None, conditioner=lambda g, a: None,
        inputs=(families.InputField("reference", families.IMAGE, "a photo to take colours from"),))
    colorizer = object.__new__(Colorizer)  # the thin client's state without a server behind it
    colorizer.family, colorizer.max_pixels = family, 100
    assert colorizer._wire({"reference": _png(10, 10)})["reference"].startswith(b"\x89PNG")
    with pytest.raises(ImageError, match="reference: 101x1"):
        colorizer._wire({"reference": _png(101, 1)})


def test_the_launcher_logs_no_key(tmp_path, caplog, monkeypatch):
    """The command line goes to the debug log with the keys hidden (the start fails at once here)."""
    import langcolor.server.launcher as launcher

    class _Dist:
        binary, libs = Path("/nonexistent/tritonserver"), Path("/nonexistent")

        def backend_directory(self):
            return tmp_path

    repo = tmp_path / "repo" / "m"
    repo.mkdir(parents=True)
    (repo / "config.pbtxt").write_text("")
    monkeypatch.setattr(launcher.TritonDist, "locate", classmethod(lambda cls: _Dist()))
    caplog.set_level(logging.DEBUG, logger="langcolor.server.launcher")
    with pytest.raises(OSError):
        TritonServer(tmp_path / "repo", api_key=KEY, log_path=tmp_path / "t.log").start()
    assert "--http-restricted-api=inference" in caplog.text and "<hidden>" in caplog.text
    assert KEY not in caplog.text
