"""Shared fixtures: a real tritonserver on free loopback ports, started once per test session.

The server loads the shipped ``model_repository/`` (``$LANGCOLOR_MODEL_REPOSITORY`` overrides) when it holds a python-backend export (the
target the bundled tritonserver can run); otherwise a random-weight ``tiny`` repository written
by ``build_tiny_repository`` into a temp folder, so the wiring is tested before any training.
Tests that need trained colours ask for ``trained_repository`` and skip on the tiny one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

# `langcolor batch` waits minutes for a server that went away; the tests that kill a server under a
# batch and expect it to stop say so with their own timing. Tests that want the wait pass --server-wait.
os.environ.setdefault("LANGCOLOR_SERVER_WAIT_S", "0")

from langcolor.client.families import DEFAULT_FAMILY
from langcolor.client.names import BACKEND
from langcolor.client.paths import default_model_repository

# The repo-root model_repository/, or $LANGCOLOR_MODEL_REPOSITORY (to test another export).
SHIPPED_REPOSITORY = default_model_repository()


@dataclass(frozen=True)
class ServedRepository:
    path: Path
    trained: bool  # the shipped weights (colours mean something) rather than random tiny ones


def _is_python_backend_export(repo: Path) -> bool:
    """Every stage of the default family runs on the langcolor backend (the bundled Triton has no
    onnxruntime one)."""
    family = DEFAULT_FAMILY
    configs = [repo / f"{family}_{s}" / "config.pbtxt" for s in ("encoder", "fusion", "decoder")]
    if not (repo / family / "config.pbtxt").is_file() or not all(c.is_file() for c in configs):
        return False
    return all(f'backend: "{BACKEND}"' in c.read_text() for c in configs)


@pytest.fixture(scope="session")
def served_repository(tmp_path_factory) -> ServedRepository:
    if _is_python_backend_export(SHIPPED_REPOSITORY):
        manifest = json.loads((SHIPPED_REPOSITORY / DEFAULT_FAMILY / "1" / "langcolor.json").read_text())
        trained = "random" not in str(manifest.get("extra", {}).get("weights", ""))
        return ServedRepository(SHIPPED_REPOSITORY, trained)
    if SHIPPED_REPOSITORY.exists():
        log.warning("%s is not a python-backend export; serving a tiny random-weight repository", SHIPPED_REPOSITORY)
    triton_repo = pytest.importorskip("langcolor.export.triton_repo", reason="needs torch to build a test repository")
    path = triton_repo.build_tiny_repository(tmp_path_factory.mktemp("tiny_repository"))
    return ServedRepository(Path(path), trained=False)


@pytest.fixture(scope="session")
def trained_repository(served_repository) -> ServedRepository:
    if not served_repository.trained:
        pytest.skip("needs the shipped trained model_repository/ (serving random tiny weights)")
    return served_repository


@pytest.fixture(scope="session")
def triton_server(served_repository, tmp_path_factory):
    """A running ``TritonServer`` (all models READY) on free loopback ports; stopped after the session."""
    from langcolor.client.errors import ModelNotFoundError
    from langcolor.server.launcher import TritonDist, TritonServer, free_ports

    try:
        TritonDist.locate()
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    http_port, grpc_port, metrics_port = free_ports(3)
    log_path = tmp_path_factory.mktemp("tritonserver") / "tritonserver.log"
    server = TritonServer(
        served_repository.path,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_path=log_path,
    )
    with server:
        yield server
    # Leave the log where pytest keeps tmp folders: the first place to look when a server test fails.
    log.info("tritonserver log: %s", log_path)


@pytest.fixture(scope="session", params=["grpc", "http"])
def protocol(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def server_url(triton_server, protocol) -> str:
    e = triton_server.endpoints
    return e.grpc_url if protocol == "grpc" else e.http_url


@dataclass(frozen=True)
class Certs:
    """A test CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a second,
    unrelated CA with its own client certificate (PEM files; keys mode 600)."""

    folder: Path

    def __getattr__(self, name: str) -> Path:  # certs.ca_pem, certs.server_key, ...
        stem, _, ext = name.rpartition("_")
        path = self.folder / f"{stem}.{ext}"
        if not path.is_file():
            raise AttributeError(name)
        return path


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory) -> Certs:
    """Made with the openssl command (EC P-256, valid for a day); skipped where it is missing."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make test certificates")
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "wrongca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", f"/CN=langcolor-test-{ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    leaves = {"server": ("localhost", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
              "client": ("langcolor-client", "ca", "extendedKeyUsage=clientAuth"),
              "wrongclient": ("rogue-client", "wrongca", "extendedKeyUsage=clientAuth")}
    for name, (cn, ca, ext) in leaves.items():
        run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(ext + "\nkeyUsage=critical,digitalSignature\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return Certs(d)
