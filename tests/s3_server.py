"""A real S3-compatible server for the tests: moto's ``moto_server``, on 127.0.0.1 only.

Found at ``$LANGCOLOR_MOTO_SERVER`` or as ``moto_server`` on PATH (CI installs it into a virtual
environment of its own, so that botocore's pins never touch the project's: ``.ci/run``). Started
with a fixed fake account in the environment, and with every way the AWS SDK could look elsewhere
for credentials or a region (instance metadata, ~/.aws) closed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def moto_binary() -> str | None:
    for candidate in (os.environ.get("LANGCOLOR_MOTO_SERVER"), shutil.which("moto_server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(binary: str, log: Path):
    """Yields the endpoint URL (``http://127.0.0.1:PORT``); the server is stopped by its PID after."""
    port = _free_port()
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **S3_ENV})
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not listen within 30 s")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_buckets(endpoint: str, *names: str) -> None:
    """Create buckets (langcolor itself never does: an output bucket must exist)."""
    from pyarrow import fs

    scheme, _, host = endpoint.partition("://")
    admin = fs.S3FileSystem(endpoint_override=host, scheme=scheme, region=S3_ENV["AWS_REGION"],
                            access_key=S3_ENV["AWS_ACCESS_KEY_ID"], secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                            allow_bucket_creation=True)
    for name in names:
        admin.create_dir(name)
