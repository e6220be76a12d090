"""``langcolor serve``: the real tritonserver on the project's model repository, on CPU.

Defaults come from ``local.env`` beside this file (environment variables of the same name win,
flags win over both); the fixed server flags are in ``launcher.py``.

Binds to loopback unless ``--host`` says otherwise, returns to the prompt only when stopped
(Ctrl-C or SIGTERM: Triton drains in-flight requests, exit status 0), and refuses to pretend: if a
model fails to load, the command names it with Triton's reason and exits non-zero.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from pathlib import Path

from langcolor.client.errors import ServerError

from .launcher import EXIT_TIMEOUT_S, LOOPBACK, STARTUP_TIMEOUT_S, ModelLoadError, TritonServer, repository_models

log = logging.getLogger(__name__)


def default_model_repository() -> Path:
    """The shipped repository (``langcolor.client.paths``), or the checkout's ``model_repository/``."""
    try:
        from langcolor.client.paths import default_model_repository as shipped
    except ImportError:  # pragma: no cover - before client/paths.py existed
        return Path(__file__).resolve().parents[1] / "model_repository"
    return Path(shipped())


SETTINGS_FILE = Path(__file__).with_name("local.env")


def load_settings(path: Path = SETTINGS_FILE) -> dict[str, str]:
    """``KEY=VALUE`` lines of ``local.env`` (comments and blanks skipped); the environment wins."""
    settings: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                settings[key.strip()] = value.strip()
    settings.update({k: v for k, v in os.environ.items() if k in settings})
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    s = load_settings()
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="Triton model repository; the shipped one if not given ($LANGCOLOR_MODEL_REPOSITORY overrides)",
    )
    parser.add_argument("--host", default=s.get("LANGCOLOR_HOST", LOOPBACK), help="address to bind; 0.0.0.0 exposes the server to the network")
    parser.add_argument("--http-port", type=int, default=int(s.get("LANGCOLOR_HTTP_PORT", 8000)), help="HTTP/REST port (KServe v2)")
    parser.add_argument("--grpc-port", type=int, default=int(s.get("LANGCOLOR_GRPC_PORT", 8001)), help="gRPC port")
    parser.add_argument("--metrics-port", type=int, default=int(s.get("LANGCOLOR_METRICS_PORT", 8002)), help="Prometheus metrics port")
    parser.add_argument("--log-file", type=Path, default=None, help="tritonserver log file; a temp file if not given")
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=float(s.get("LANGCOLOR_STARTUP_TIMEOUT_S", STARTUP_TIMEOUT_S)),
        help="seconds to wait for every model to be ready",
    )
    parser.add_argument(
        "--exit-timeout",
        type=int,
        default=int(s.get("LANGCOLOR_EXIT_TIMEOUT_S", EXIT_TIMEOUT_S)),
        help="seconds Triton drains in-flight requests and open HTTP connections on stop",
    )


class _Stop(Exception):
    """Raised from the SIGTERM handler so that a stop takes the same path as Ctrl-C."""


def _raise_stop(signum, _frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    repo = (args.model_repository or default_model_repository()).resolve()
    if not repository_models(repo):
        raise ServerError(
            f"no model repository at {repo} (expected <model>/config.pbtxt folders); "
            "run `langcolor export` or pass --model-repository"
        )
    ports = {args.http_port, args.grpc_port, args.metrics_port}
    if len(ports) != 3:
        raise ServerError("--http-port, --grpc-port and --metrics-port must differ")
    server = TritonServer(
        repo,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_path=args.log_file,
        startup_timeout_s=args.startup_timeout,
        exit_timeout_s=args.exit_timeout,
    )
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        try:
            server.start()
        except ModelLoadError as e:
            # One line per failed model, then Triton's log for the full traceback.
            for m in e.failed:
                print(f"langcolor serve: model '{m.name}' failed to load: {m.short_reason}", flush=True)
            names = ", ".join(m.name for m in e.failed)
            raise ServerError(f"{len(e.failed)} model(s) failed to load ({names}); tritonserver log: {server.log_path}") from e
        _print_endpoints(server, repo)
        while server.running:
            time.sleep(0.5)
        # The process ended without being asked to: say so and fail.
        print(f"langcolor serve: tritonserver exited with status {server.process.returncode}", flush=True)
        print(server.log_tail(), flush=True)
        return 1
    except (KeyboardInterrupt, _Stop) as e:
        print(f"langcolor serve: stopping ({'SIGINT' if isinstance(e, KeyboardInterrupt) else e})", flush=True)
        return 0
    finally:
        # A second Ctrl-C or SIGTERM must not cut the drain short and leave the server running.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = server.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if code == 1:
            log.warning("tritonserver hit its %d s exit timeout (a client kept a connection open?)", args.exit_timeout)
        elif code is not None:
            log.info("tritonserver exited with status %s", code)


def _print_endpoints(server: TritonServer, repo: Path) -> None:
    e = server.endpoints
    models = ", ".join(sorted(server.model_states()))
    exposed = "" if e.host in (LOOPBACK, "localhost", "::1") else "  (not loopback: reachable from the network)"
    print(f"langcolor serve: ready in {server.startup_s:.1f} s, repository {repo}", flush=True)
    print(f"  models : {models}", flush=True)
    print(f"  HTTP   : http://{e.http_url}{exposed}", flush=True)
    print(f"  gRPC   : {e.grpc_url}", flush=True)
    print(f"  metrics: {e.metrics_url}", flush=True)
    print(f"  log    : {server.log_path}", flush=True)
    print("  stop with Ctrl-C or SIGTERM", flush=True)
