"""Start, watch and stop the real ``tritonserver`` that the ``nvidia-pytriton`` wheel bundles.

The wheel ships Triton 2.51 (``pytriton/tritonserver/bin/tritonserver``), its shared libraries in
``site-packages/nvidia_pytriton.libs`` and one Python-backend stub per Python version. The stub
must sit beside ``libtriton_python.so``, so we assemble a backend directory of our own (a cache
folder, copied once per wheel + Python version) rather than writing into site-packages. It also
holds the project's Python-based backend, ``langcolor/model.py``, which every Python model of the
repository names (``backend: "langcolor"``).

Three details decide whether a Python-backend model can import this project:
- ``PATH`` starts with this interpreter's ``bin/``: the stub embeds Python and finds its
  ``sys.prefix`` by looking for ``python3`` on ``PATH``; with the venv's first, the venv's
  site-packages is a real site directory and its ``.pth`` files (the editable install) run;
- ``PYTHONPATH`` carries this interpreter's ``sys.path`` as a fallback for non-venv installs;
- ``LD_LIBRARY_PATH`` gets the wheel's bundled libraries.

Model control is ``explicit`` with ``--load-model=*``: every model in the repository is loaded at
start-up, nothing reloads behind our back when files change (``poll`` would pick up a half-written
export), and tests can still load/unload a model through the repository API (``none`` forbids it).
``--exit-on-error=false`` keeps the server up when one model fails so we can ask Triton *why*
(the repository index carries the reason); ``--strict-readiness`` makes ``/v2/health/ready`` false
while any model is not ready.

An API key turns on Triton's restricted APIs (``--http-restricted-api``, ``--grpc-restricted-protocol``)
in two groups, both read from ``Authorization: Bearer <key>`` (gRPC metadata
``triton-grpc-protocol-authorization``): inference, metadata, model config and statistics take the
API key; model-repository control, logging, trace and shared memory take the admin key, which is a
random one known only to this process unless the operator gives one, so that nobody else can load
or unload a model or point a log somewhere. Health stays open for probes. Triton 2.51 reads these
options only from its command line, so the keys are in ``tritonserver``'s argv (visible to local
users in a process listing; a container's PID namespace hides it from the host's other users);
nothing of ours logs or prints them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from langcolor.client.connection import SECRET_ENV, ApiKey, check_private_file
from langcolor.client.errors import ModelNotFoundError, ServerError
from langcolor.client.names import BACKEND

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 180.0  # model loading on a busy 2-core machine
# On SIGTERM Triton first waits for open HTTP connections (an idle keep-alive client counts) and
# in-flight requests, up to --exit-timeout-secs in all, then unloads the models.
EXIT_TIMEOUT_S = 15
STOP_GRACE_S = 15.0  # after the exit timeout, before SIGKILL: unloading takes a few seconds
# The langcolor Python-based backend's model.py, installed as backends/langcolor/model.py.
BACKEND_SHIM = Path(__file__).resolve().parent / "backend" / "model.py"
# Triton's restricted-API groups (health is never restricted: probes need it; metrics cannot be).
USER_APIS = ("inference", "metadata", "model-config", "statistics")
ADMIN_APIS = ("model-repository", "logging", "trace", "shared-memory")
KEY_HEADER = "Authorization"  # gRPC: triton-grpc-protocol-authorization
ADMIN_ENV = ("LANGCOLOR_ADMIN_KEY_FILE",)


class ModelLoadError(ServerError):
    """One or more models failed to load; ``failed`` carries Triton's reason for each."""

    def __init__(self, failed: tuple["ModelState", ...]):
        self.failed = failed
        lines = "; ".join(f"model '{m.name}' failed to load: {m.short_reason}" for m in failed)
        super().__init__(lines)


@dataclass(frozen=True)
class ModelState:
    name: str
    version: str
    state: str  # READY, UNAVAILABLE, LOADING, UNLOADING or "" (never loaded)
    reason: str

    @property
    def short_reason(self) -> str:
        """Triton's reason without the Python traceback frames it appends."""
        head = self.reason.split("\n\nAt:")[0].strip()
        return head or self.state or "unknown"


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:  # tritonclient.http style, no scheme
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        # A server bound to every interface is reached locally on loopback.
        return LOOPBACK if self.host in ("0.0.0.0", "::", "") else self.host


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct free ports: all sockets are held open together so the OS cannot repeat one."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class TritonDist:
    """Where the wheel keeps the server binary, its libraries and the stubs."""

    binary: Path
    libs: Path
    python_backend: Path  # libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # for this interpreter's Python version

    @classmethod
    def locate(cls) -> "TritonDist":
        try:
            import pytriton  # noqa: F401 (only to find the wheel)
        except ImportError as e:
            raise ModelNotFoundError(
                "tritonserver is not installed: pip install 'langcolor[serve]' (nvidia-pytriton==0.7.0)"
            ) from e
        root = Path(pytriton.__file__).resolve().parent / "tritonserver"
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        dist = cls(
            binary=root / "bin" / "tritonserver",
            libs=root.parent.parent / "nvidia_pytriton.libs",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        )
        for p in (dist.binary, dist.libs, dist.python_backend / "libtriton_python.so", dist.stub):
            if not p.exists():
                raise ModelNotFoundError(f"nvidia-pytriton install is incomplete: {p} is missing (Python {version})")
        return dist

    def backend_directory(self, cache_dir: Path | None = None) -> Path:
        """A ``backends/`` folder with the Python backend, this Python's stub and the ``langcolor``
        Python-based backend (``backends/langcolor/model.py``), built once per wheel, Python and shim."""
        cache = Path(cache_dir or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "langcolor"
        shim = BACKEND_SHIM.read_bytes()
        key = (f"tritonserver-{self.binary.stat().st_size}-{self.stub.stat().st_mtime_ns}-"
               f"py{sys.version_info[0]}{sys.version_info[1]}-{hashlib.sha256(shim).hexdigest()[:12]}")
        target = cache / key / "backends"
        if (target / "python" / "triton_python_backend_stub").exists() and (target / BACKEND / "model.py").exists():
            return target
        cache.mkdir(parents=True, exist_ok=True)
        # Build aside then rename, so two processes starting at once never see half a directory.
        tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=cache))
        py = tmp / "backends" / "python"
        py.mkdir(parents=True)
        for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(self.python_backend / f, py / f)
        shutil.copy2(self.stub, py / "triton_python_backend_stub")
        (tmp / "backends" / BACKEND).mkdir()
        (tmp / "backends" / BACKEND / "model.py").write_bytes(shim)
        (cache / key).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, cache / key)
        except OSError:  # someone else won the race
            shutil.rmtree(tmp, ignore_errors=True)
        return target


@dataclass(frozen=True)
class GrpcTls:
    """Triton's own gRPC TLS: its certificate and key (PEM files) and, for mutual TLS, the CA whose
    client certificates it accepts."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).resolve())
                if not Path(value).is_file():
                    raise ServerError(f"gRPC TLS {name.replace('_', ' ')} file {value} does not exist")
        check_private_file(self.key, "gRPC TLS private key")

    def flags(self) -> list[str]:
        flags = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.client_ca is not None:
            flags += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca}"]
        return flags


def restricted_flags(apis: tuple[str, ...], key: ApiKey) -> list[str]:
    """Triton's options putting ``apis`` behind ``Authorization: Bearer <key>`` on both protocols (the
    syntax is ``<apis>:<header>=<value>``; its --help text shows a comma where the parser wants ':')."""
    listed = ",".join(apis)
    return [f"--http-restricted-api={listed}:{KEY_HEADER}={key.bearer()}",
            f"--grpc-restricted-protocol={listed}:{KEY_HEADER.lower()}={key.bearer()}"]


def server_environment(dist: TritonDist) -> dict[str, str]:
    env = os.environ.copy()
    for name in SECRET_ENV + ADMIN_ENV:  # the models have no use for the keys
        env.pop(name, None)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(dist.libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    paths = [p for p in sys.path if p and Path(p).exists()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + env.get("PYTHONPATH", "").split(os.pathsep)).keys()).strip(os.pathsep)
    # One onnxruntime session per stage on a shared CPU: keep each one from grabbing every core.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def repository_models(model_repository: Path) -> list[str]:
    """Model folders Triton will try to load (those with a ``config.pbtxt``)."""
    return sorted(p.parent.name for p in Path(model_repository).glob("*/config.pbtxt"))


def retuned_repository(model_repository: Path, out: Path, intra_op_threads: int | None = None,
                       instances: int | None = None, queue_delay_us: int | None = None) -> list[str]:
    """A view of ``model_repository`` under ``out`` (an empty folder) with the serving knobs of every
    model that has them changed (``triton_config.retune``: the stages and a family's fused chain):
    each model folder gets its own ``config.pbtxt``, and its other entries are links to the
    originals, so nothing large is copied. Returns the models whose configs changed."""
    from langcolor.export.triton_config import parse, retune, to_text

    changed = []
    for name in repository_models(model_repository):
        src, dst = Path(model_repository) / name, Path(out) / name
        dst.mkdir(parents=True)
        for entry in src.iterdir():
            if entry.name != "config.pbtxt":
                (dst / entry.name).symlink_to(entry.resolve())
        config = parse((src / "config.pbtxt").read_text())
        if retune(config, intra_op_threads=intra_op_threads, instances=instances, queue_delay_us=queue_delay_us):
            changed.append(name)
            text = "# Serving knobs changed by `langcolor serve`; the exported config is " f"{src / 'config.pbtxt'}\n" + to_text(config)
        else:
            text = (src / "config.pbtxt").read_text()
        (dst / "config.pbtxt").write_text(text)
    return changed


class TritonServer:
    """A ``tritonserver`` subprocess: ``with TritonServer(repo, ...) as server: server.endpoints``.

    ``start()`` returns once every model in the repository is READY, raises ``ModelLoadError`` (with
    Triton's reason per model) if one failed (or, with ``allow_failed``, lists it in ``failed``), or ``ServerError`` with the log tail if the process
    died or the timeout passed. The process is stopped on any failure in ``start()``.
    """

    def __init__(
        self,
        model_repository: Path | str,
        *,
        host: str = LOOPBACK,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        log_path: Path | str | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        exit_timeout_s: int = EXIT_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
        log_verbose: int = 0,
        allow_failed: bool = False,
        extra_args: tuple[str, ...] = (),
        api_key: ApiKey | str | None = None,
        admin_key: ApiKey | str | None = None,
        grpc_tls: GrpcTls | None = None,
    ):
        self.model_repository = Path(model_repository).resolve()
        self.endpoints = Endpoints(host, http_port, grpc_port, metrics_port)
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.exit_timeout_s = int(exit_timeout_s)
        self.stop_grace_s = stop_grace_s
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self.startup_s: float | None = None  # seconds from spawn to every model ready
        # allow_failed: start() returns with failed models listed here instead of raising (fault tests).
        self.allow_failed = allow_failed
        self.failed: tuple[ModelState, ...] = ()
        self.api_key = ApiKey.of(api_key)
        # With an API key the admin APIs are never left open: without an admin key of the operator's,
        # they take a random one that only this process holds (for its own readiness polling).
        admin = ApiKey.of(admin_key)
        if admin is None and self.api_key is not None:
            admin = ApiKey(secrets.token_urlsafe(32))
        self.admin_key = admin
        self.grpc_tls = grpc_tls

    # -- lifecycle -------------------------------------------------------------------------------
    def command(self, backend_dir: Path, binary: Path) -> list[str]:
        e = self.endpoints
        return [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={e.host}",
            f"--grpc-address={e.host}",
            f"--http-port={e.http_port}",
            f"--grpc-port={e.grpc_port}",
            f"--metrics-address={e.host}",
            f"--metrics-port={e.metrics_port}",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--exit-on-error=false",
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            *(restricted_flags(USER_APIS, self.api_key) if self.api_key else ()),
            *(restricted_flags(ADMIN_APIS, self.admin_key) if self.admin_key else ()),
            *(self.grpc_tls.flags() if self.grpc_tls else ()),
            *self.extra_args,
        ]

    @property
    def admin_headers(self) -> dict[str, str] | None:
        """What an HTTP call to the repository, logging or trace APIs carries (None: they are open)."""
        return {KEY_HEADER: self.admin_key.bearer()} if self.admin_key else None

    def redact(self, text: str) -> str:
        """``text`` with every key this server holds replaced by ``<hidden>``."""
        for key in (self.api_key, self.admin_key):
            if key is not None:
                text = text.replace(key.reveal(), "<hidden>")
        return text

    def start(self) -> "TritonServer":
        if not self.model_repository.is_dir():
            raise ModelNotFoundError(f"model repository not found: {self.model_repository}")
        if not repository_models(self.model_repository):
            raise ModelNotFoundError(f"no model (no */config.pbtxt) in {self.model_repository}")
        dist = TritonDist.locate()
        cmd = self.command(dist.backend_directory(), dist.binary)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        log.info("starting tritonserver on %s (log: %s)", self.model_repository, self.log_path)
        log.debug("command: %s", self.redact(" ".join(cmd)))
        t0 = time.monotonic()
        # Own process group: a Ctrl-C at the terminal reaches us, and we decide how Triton stops.
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=server_environment(dist),
            start_new_session=True,
        )
        try:
            self.wait_ready(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        log.info("tritonserver ready in %.1f s", self.startup_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + timeout_s
        expected = set(repository_models(self.model_repository))
        client = httpclient.InferenceServerClient(self.endpoints.http_url, connection_timeout=5.0, network_timeout=10.0)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerError(
                        f"tritonserver exited with status {self.process.returncode} during start-up:\n{self.log_tail()}"
                    )
                try:
                    if client.is_server_live():  # health: open, with or without keys
                        if self._check_states(self.model_states(client), expected):
                            return
                except (InferenceServerException, ConnectionError, OSError) as e:
                    log.debug("not up yet: %s", self.redact(str(e)))
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"tritonserver not ready after {timeout_s:.0f} s; log tail:\n{self.log_tail()}"
                    )
                time.sleep(0.25)
        finally:
            client.close()

    def _check_states(self, states: dict[str, ModelState], expected: set[str]) -> bool:
        """True once loading has settled with every model READY; raises or records failures."""
        if any(s.state in ("LOADING", "UNLOADING") for s in states.values()) or not expected <= states.keys():
            return False
        failed = [s for s in states.values() if s.state == "UNAVAILABLE"]
        # A model Triton never tried (an ensemble whose step failed or is missing, an unparsable
        # config) keeps an empty state and no reason in the index; its reason is only in the log.
        for name in sorted(expected):
            s = states[name]
            if s.state == "":
                fallback = "ensemble not loaded: one of its steps failed to load" if self._is_ensemble(name) else "not loaded"
                failed.append(ModelState(name, s.version, "UNAVAILABLE", s.reason or self._log_reason(name) or fallback))
        self.failed = tuple(failed)
        if failed and not self.allow_failed:
            raise ModelLoadError(self.failed)
        return True

    def _log_reason(self, model: str) -> str:
        """The last error line of Triton's log that names ``model`` (quoted or as a word)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        if self._log_file is not None:
            self._log_file.flush()
        pattern = re.compile(rf"^E\S* .*?\] \"(.*(?:'{re.escape(model)}'|\b{re.escape(model)}\b(?!_)).*)\"$")
        reasons = [m.group(1) for m in map(pattern.match, self.log_path.read_text(errors="replace").splitlines()) if m]
        # The log escapes newlines; drop the Python traceback Triton appends after "At:".
        return reasons[-1].split("\\n\\nAt:")[0].replace("\\n", " ").strip() if reasons else ""

    def _is_ensemble(self, model: str) -> bool:
        config = self.model_repository / model / "config.pbtxt"
        return 'platform: "ensemble"' in config.read_text(errors="replace") if config.is_file() else False

    def model_states(self, client=None) -> dict[str, ModelState]:
        """Triton's repository index: state and reason per model (latest version listed)."""
        import tritonclient.http as httpclient

        own = client is None
        client = client or httpclient.InferenceServerClient(self.endpoints.http_url)
        try:
            index = client.get_model_repository_index(headers=self.admin_headers)
        finally:
            if own:
                client.close()
        return {
            m["name"]: ModelState(m["name"], str(m.get("version", "")), m.get("state", ""), m.get("reason", ""))
            for m in index
        }

    def stop(self) -> int | None:
        """SIGTERM, wait the exit timeout plus ``stop_grace_s``, then SIGKILL the process group.

        Returns Triton's exit status: 0 for a clean drain, 1 when the exit timeout ran out (a client
        kept an HTTP connection open, or models were still busy), -9 if it had to be killed.
        """
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            log.info("stopping tritonserver (pid %d)", proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.exit_timeout_s + self.stop_grace_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver still running %.0f s after SIGTERM; killing it",
                            self.exit_timeout_s + self.stop_grace_s)
        # The group also holds the Python-backend stubs; none must outlive the server.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, n_lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        if self._log_file is not None:
            self._log_file.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        # Triton's option tables are noise in an error message.
        lines = [ln for ln in lines if not ln.startswith(("+", "|"))]
        # Triton does not log the keys; a usage error that quotes an option could.
        return self.redact("\n".join(lines[-n_lines:]))

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
