"""``langcolor serve``: the real tritonserver on the project's model repository, on CPU.

Defaults come from ``local.env`` beside this file (environment variables of the same name win,
flags win over both); the fixed server flags are in ``launcher.py``.

Binds to loopback unless ``--host`` says otherwise, returns to the prompt only when stopped
(Ctrl-C or SIGTERM: Triton drains in-flight requests, exit status 0), and refuses to pretend: if a
model fails to load, the command names it with Triton's reason and exits non-zero.

Off loopback, ``--api-key-file`` puts every API but health behind a key (``launcher.py``), and
``--grpc-tls-cert``/``--grpc-tls-key`` give gRPC Triton's own TLS; serving off loopback without a key
(or with the key crossing the network in clear text) prints a loud warning unless ``--insecure``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

from langcolor.client.connection import API_KEY_ENV, api_key_from, read_key_file
from langcolor.client.errors import ServerError
from langcolor.client.imageio import DEFAULT_MAX_PIXELS

from .launcher import (EXIT_TIMEOUT_S, LOOPBACK, STARTUP_TIMEOUT_S, GrpcTls, ModelLoadError, TritonServer,
                       repository_models, retuned_repository)

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


LIMITS_HELP = f"""\
limits (a request over one is refused, with an error that names it, for that request alone):
  request body     Triton 2.51 has no limit of its own: it reads a whole request into memory before
                   checking anything, the key included (300 MiB without a key: +300 MB over HTTP,
                   +700 MB over gRPC). Off loopback, cap it at the TLS proxy in front:
                   client_max_body_size 16m in server_config/nginx.conf.tmpl.
  image pixels     {DEFAULT_MAX_PIXELS} per image by default, read from the file's header before any
                   pixel is decoded: the colorize config's max_pixels (langcolor export --max-pixels).
  caption length   T words or word pieces, each caption family's own; `langcolor models` shows T.
  reference image  every image input of a family (a reference photo) has the image pixel cap; on the
                   wire it counts toward the request body.

keys: --api-key-file (or ${API_KEY_ENV}_FILE / ${API_KEY_ENV}) for inference, metadata, model config and
statistics: clients send "Authorization: Bearer KEY" (HTTP) or the gRPC metadata
"triton-grpc-protocol-authorization: Bearer KEY". --admin-key-file for the model repository, logging,
trace and shared memory (without it, and with an API key, nobody else can use them). Health is open.
Triton reads the keys from its command line only: they are in tritonserver's process arguments."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def exposure_warnings(host: str, api_key: bool, grpc_tls: bool) -> list[str]:
    """What is open to the network when serving on ``host`` (empty on loopback)."""
    if is_loopback(host):
        return []
    if not api_key:
        return [f"serving on {host} WITHOUT AN API KEY: anyone who can reach these ports can run inference, read "
                "model configs and statistics, load and unload models, and change logging and tracing.",
                "Give --api-key-file FILE, or --insecure if something in front of the server authenticates."]
    lines = []
    if not grpc_tls:
        lines.append(f"gRPC on {host} is plaintext: the API key crosses the network readable by anyone on the "
                     "path; give --grpc-tls-cert and --grpc-tls-key.")
    lines.append(f"HTTP on {host} is plaintext (Triton 2.51 has no HTTP TLS): the API key crosses the network "
                 "readable; serve HTTPS from the TLS proxy in front (server_config/README.md), which also caps "
                 "the request size: Triton reads any request whole, with or without the key, before refusing it.")
    lines.append("The metrics port cannot be restricted: it tells anyone model names and request counts.")
    return lines + ["Add --insecure to silence this warning."]


def _file_setting(value: str | None) -> Path | None:
    return Path(value) if value else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    s = load_settings()
    parser.epilog = LIMITS_HELP
    # Keep the limits table as written (the CLI's formatter reflows text and shows defaults).
    parser.formatter_class = type("ServeHelp", (argparse.RawDescriptionHelpFormatter, parser.formatter_class), {})
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
    tune = parser.add_argument_group("serving knobs (default: what `langcolor export` chose for each model)")
    tune.add_argument("--intra-op-threads", type=int, default=None, metavar="N",
                      help="onnxruntime threads per instance of every stage and fused chain; 0: every core")
    tune.add_argument("--instances", type=int, default=None, metavar="N", help="instances of every stage and fused chain")
    tune.add_argument("--queue-delay-us", type=int, default=None, metavar="US",
                      help="dynamic batcher's queue delay of every stage and fused chain, in microseconds")
    sec = parser.add_argument_group("keys and TLS (see the notes at the end)")
    sec.add_argument("--api-key-file", type=Path, default=_file_setting(s.get("LANGCOLOR_API_KEY_FILE")), metavar="FILE",
                     help=f"file holding the API key clients must send (or ${API_KEY_ENV} holding the key); "
                     "mode 600: a key file other users can read is refused")
    sec.add_argument("--admin-key-file", type=Path, default=_file_setting(s.get("LANGCOLOR_ADMIN_KEY_FILE")),
                     metavar="FILE", help="file holding the key for the model repository, logging, trace and "
                     "shared-memory APIs (default: with an API key, a random one held by this process only)")
    sec.add_argument("--grpc-tls-cert", type=Path, default=_file_setting(s.get("LANGCOLOR_GRPC_TLS_CERT")),
                     metavar="FILE", help="PEM certificate: gRPC speaks TLS (Triton's own --grpc-use-ssl)")
    sec.add_argument("--grpc-tls-key", type=Path, default=_file_setting(s.get("LANGCOLOR_GRPC_TLS_KEY")),
                     metavar="FILE", help="the PEM private key of --grpc-tls-cert (mode 600)")
    sec.add_argument("--grpc-tls-client-ca", type=Path, default=_file_setting(s.get("LANGCOLOR_GRPC_TLS_CLIENT_CA")),
                     metavar="FILE", help="mutual TLS: accept only gRPC clients with a certificate from this CA")
    sec.add_argument("--insecure", action="store_true",
                     help="serve off loopback without a key or with the key in clear text, without the warning")


class _Stop(Exception):
    """Raised from the SIGTERM handler so that a stop takes the same path as Ctrl-C."""


def _raise_stop(signum, _frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def _security(args: argparse.Namespace) -> dict:
    """The keys and TLS files the flags name, checked before anything starts."""
    if (args.grpc_tls_cert is None) != (args.grpc_tls_key is None):
        raise ServerError("--grpc-tls-cert and --grpc-tls-key go together")
    if args.grpc_tls_client_ca is not None and args.grpc_tls_cert is None:
        raise ServerError("--grpc-tls-client-ca (mutual TLS) needs --grpc-tls-cert and --grpc-tls-key")
    tls = GrpcTls(args.grpc_tls_cert, args.grpc_tls_key, args.grpc_tls_client_ca) if args.grpc_tls_cert else None
    admin = read_key_file(args.admin_key_file, "admin key file") if args.admin_key_file else None
    return {"api_key": api_key_from(args.api_key_file), "admin_key": admin, "grpc_tls": tls}


def _knobs(args: argparse.Namespace) -> dict[str, int]:
    """The serving knobs the flags override, checked."""
    knobs = {"intra_op_threads": args.intra_op_threads, "instances": args.instances, "queue_delay_us": args.queue_delay_us}
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if knobs.get("instances", 1) < 1 or knobs.get("intra_op_threads", 0) < 0 or knobs.get("queue_delay_us", 0) < 0:
        raise ServerError("--instances must be at least 1, --intra-op-threads and --queue-delay-us at least 0")
    return knobs


def run(args: argparse.Namespace) -> int:
    security = _security(args)
    if not args.insecure:
        for line in exposure_warnings(args.host, security["api_key"] is not None, security["grpc_tls"] is not None):
            print(f"langcolor serve: WARNING: {line}", file=sys.stderr, flush=True)
    repo = (args.model_repository or default_model_repository()).resolve()
    if not repository_models(repo):
        raise ServerError(
            f"no model repository at {repo} (expected <model>/config.pbtxt folders); "
            "run `langcolor export` or pass --model-repository"
        )
    ports = {args.http_port, args.grpc_port, args.metrics_port}
    if len(ports) != 3:
        raise ServerError("--http-port, --grpc-port and --metrics-port must differ")
    knobs, view = _knobs(args), None
    if knobs:
        import tempfile

        view = Path(tempfile.mkdtemp(prefix="langcolor-serve-"))  # removed when the server stops
        changed = retuned_repository(repo, view, **knobs)
        print(f"langcolor serve: {', '.join(f'{k}={v}' for k, v in knobs.items())} for {len(changed)} model(s): "
              f"{', '.join(changed) or 'none has these knobs'}", flush=True)
    server = TritonServer(
        view or repo,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_path=args.log_file,
        startup_timeout_s=args.startup_timeout,
        exit_timeout_s=args.exit_timeout,
        **security,
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
        _print_endpoints(server, repo, admin_given=security["admin_key"] is not None)
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
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)


def _print_endpoints(server: TritonServer, repo: Path, admin_given: bool) -> None:
    e = server.endpoints
    models = ", ".join(sorted(server.model_states()))
    exposed = "" if e.host in (LOOPBACK, "localhost", "::1") else "  (not loopback: reachable from the network)"
    print(f"langcolor serve: ready in {server.startup_s:.1f} s, repository {repo}", flush=True)
    print(f"  models : {models}", flush=True)
    tls = server.grpc_tls
    grpc_tls = (" (TLS, client certificates required)" if tls.client_ca else " (TLS)") if tls else ""
    print(f"  HTTP   : http://{e.http_url}{exposed}", flush=True)
    print(f"  gRPC   : {'grpcs' if tls else 'grpc'}://{e.grpc_url}{grpc_tls}", flush=True)
    print(f"  metrics: {e.metrics_url} (never needs a key)", flush=True)
    if server.api_key is not None:
        print("  API key: required for inference, metadata, config and statistics "
              "(HTTP 'Authorization: Bearer KEY', gRPC 'triton-grpc-protocol-authorization: Bearer KEY')", flush=True)
    if server.admin_key is not None:
        holder = "the admin key" if admin_given else "a random key held by this process: closed to clients"
        print(f"  admin  : repository, logging, trace and shared memory take {holder}", flush=True)
    print(f"  limits : {_max_pixels(repo)} pixels per image (image inputs too); request body: no limit in "
          "Triton 2.51, cap it at the proxy", flush=True)
    print(f"  log    : {server.log_path}", flush=True)
    print("  stop with Ctrl-C or SIGTERM", flush=True)


MAX_PIXELS_PARAM = re.compile(r'key:\s*"max_pixels"\s*value\s*\{\s*string_value:\s*"(\d+)"')


def _max_pixels(repo: Path) -> int:
    """The colorize endpoint's pixel cap, as the config that carries it (what Triton loaded) declares it."""
    for config in sorted(repo.glob("*/config.pbtxt")):
        found = MAX_PIXELS_PARAM.search(config.read_text(errors="replace"))
        if found:
            return int(found.group(1))
    return DEFAULT_MAX_PIXELS
