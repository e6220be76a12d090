"""The served model, over gRPC or HTTP: the ``colorize`` endpoint (bytes in, bytes out) or the
``<family>`` ensemble (tensors, the same ``infer`` as the in-process ``OnnxStages``).

The protocol comes from the URL's scheme (``grpc://host:8001``, ``http://host:8000``; ``grpcs://``
and ``https://`` for TLS), or from ``protocol`` for a bare ``host:port`` (gRPC by default). A port
that answers the other protocol, or TLS where the client speaks plaintext (and the reverse), is named
as such rather than reported as unreachable.

With ``api_key`` every call carries it: ``Authorization: Bearer <key>`` over HTTP,
``triton-grpc-protocol-authorization: Bearer <key>`` over gRPC (Triton's restricted-protocol
metadata key). A refused key is an ``AuthenticationError``, a refused certificate a ``TlsError``;
neither is retried, and neither message holds the key.

Before any pixel leaves the client, ``RemoteStages`` checks, in order: the server answers (retried
with backoff), the model it will call is READY (else Triton's reason from the repository index);
for the endpoint, that it serves the family; for the ensemble, that the hashes of the conditioner's
files in the ensemble's config ``parameters`` equal the client's (``TokenizerMismatchError``) and,
when the caller gives its manifest's geometry, that the served one is the same
(``ModelMismatchError``). Token ids mean nothing across tokenizers: a mismatch would colour "red"
with the id of some other word, silently.

Retries are for transport failures only (connection refused or reset, gRPC UNAVAILABLE that is not
a refused key or certificate): a request Triton *rejected* (wrong shape, bad image, empty caption)
fails at once with Triton's message. Once connected, ``wait_s`` lets a call ride out a server restart:
it keeps retrying with exponential backoff (capped at ``MAX_BACKOFF_S``) on a fresh connection until
the server is back or ``wait_s`` has passed since the call's first failure; the outage is logged
once when it starts and once when it ends, however many calls are waiting. Requests larger than the
ensemble's ``max_batch_size`` are split and sent concurrently; the ``submit_*`` methods return
futures so that many requests can be in flight for Triton's dynamic batcher to group. Each worker
thread owns its own tritonclient (the HTTP client is not thread-safe; separate gRPC channels also
avoid head-of-line blocking on one connection).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np

from . import families, names
from .connection import ApiKey, TlsFiles
from .errors import ServerError, TokenizerMismatchError
from .families import Note
from .spec import TOKENIZER_FILE, ModelGeometry, ensemble_spec

log = logging.getLogger(__name__)

T = TypeVar("T")

PROTOCOLS = ("grpc", "http")

DEFAULT_TIMEOUT_S = 60.0  # per request; a 2-core CPU server with a queue can take seconds
DEFAULT_BACKOFF_S = 0.25  # first retry delay; doubles each attempt
MAX_BACKOFF_S = 8.0
HTTP_KEY_HEADER = "Authorization"
GRPC_KEY_HEADER = "triton-grpc-protocol-authorization"  # Triton reads restricted-protocol metadata as triton-grpc-protocol-<key>
PROBE_TIMEOUT_S = 3.0


class ServerUnavailableError(ServerError):
    """The server could not be reached (after retries)."""


class ModelNotReadyError(ServerError):
    """The server is up but the model is not loaded or failed to load."""


class ModelMismatchError(ServerError):
    """The served model's geometry (image size, caption length, vocabulary) differs from the client's."""


class RequestRejectedError(ServerError):
    """Triton refused this request (shape, dtype, undecodable image, bad caption): do not retry it."""


class RequestTooLargeError(RequestRejectedError):
    """The request is larger than the server (or the proxy in front of it) accepts."""


class AuthenticationError(ServerError):
    """The server asks for an API key and none was sent, or the one sent is not the right one."""


class TlsError(ServerError):
    """TLS could not be agreed: an untrusted certificate, TLS on one side only, a refused client certificate."""


def _status(e: Exception) -> str:
    status = getattr(e, "status", None)
    return str(status() if callable(status) else status or "")


try:  # tritonclient's HTTP transport; absent when only the gRPC extra is installed
    from geventhttpclient.response import HTTPConnectionClosed as _HTTPConnectionClosed
except ImportError:  # pragma: no cover
    class _HTTPConnectionClosed(Exception):  # type: ignore[no-redef]
        pass


# Triton's words for a missing or wrong restricted-API header (HTTP 403; over gRPC an UNAVAILABLE,
# which must not be mistaken for a server that is down), and a proxy's 401/403.
_AUTH_WORDS = ("This API is restricted", "This protocol is restricted", "status: 401", "status: 403")
# gRPC reports every TLS failure as UNAVAILABLE too; these are not going to pass on a retry.
_TLS_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number")
_TLS_UNTRUSTED = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "Peer name", "mismatch, certificate")
_TLS_OTHER = ("Tls handshake failed", "SSL_ERROR_SSL", "handshake failure", "certificate required", "unknown ca",
              "bad certificate")


def _is_auth_failure(e: Exception) -> bool:
    if _status(e) in ("401", "403", "StatusCode.UNAUTHENTICATED", "StatusCode.PERMISSION_DENIED"):
        return True
    return any(w in _message(e) for w in _AUTH_WORDS)


def _tls_failure(e: Exception) -> str | None:
    """"not-tls", "untrusted" or "handshake" for a TLS failure that a retry cannot fix, else None."""
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return None  # the peer went away mid-handshake: a restart, not a configuration
    text = f"{_message(e)} {getattr(e, 'reason', '') or ''}"
    for kind, words in (("not-tls", _TLS_NOT_TLS), ("untrusted", _TLS_UNTRUSTED), ("handshake", _TLS_OTHER)):
        if any(w in text for w in words):
            return kind
    return "handshake" if isinstance(e, ssl.SSLError) else None


def _tls_reason(e: Exception, words: tuple[str, ...]) -> str:
    """The part of a TLS error that says why (gRPC's text starts with addresses and library codes)."""
    text = _message(e)
    at = min((i for i in (text.find(w) for w in words) if i >= 0), default=max(0, len(text) - 120))
    return text[at : at + 120].removesuffix(": OK").strip()


def _is_too_large(e: Exception) -> bool:
    """A body over the limit of the proxy in front (nginx's 413) or of the gRPC channel."""
    return _status(e) == "413" or any(w in _message(e) for w in ("status: 413", "larger than max"))


def _is_transient(e: Exception) -> bool:
    """Worth retrying: the request never reached a model, or the server is restarting."""
    if _is_auth_failure(e) or _tls_failure(e) is not None:
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    if isinstance(e, OSError) and not hasattr(e, "message"):
        return True  # socket-level failures from geventhttpclient
    if isinstance(e, _HTTPConnectionClosed):
        return True  # the HTTP server went away mid-request (killed, restarting); inference is idempotent
    return "UNAVAILABLE" in _status(e) or _status(e) in ("502", "503")


def _is_not_found(e: Exception) -> bool:
    return "NOT_FOUND" in _status(e) or _status(e) == "404"


def _message(e: Exception) -> str:
    msg = getattr(e, "message", None)
    text = msg() if callable(msg) else str(e)
    return (text or type(e).__name__).replace("[request id: <id_unknown>] ", "").strip()


def _geometry_text(g: ModelGeometry) -> str:
    """The served contract in a few words: image size and every input's shape (and range)."""
    parts = [f"image size {g.image_size}"]
    for t in ensemble_spec(g).inputs[1:]:
        rng = f" in [{t.value_range[0]:g}, {t.value_range[1]:g}]" if t.value_range is not None else ""
        parts.append(f"{t.name} {list(t.dims)}{rng}")
    return ", ".join(parts) + f", features {[list(t.dims) for t in g.features]}"


# scheme -> (protocol, TLS)
_SCHEMES = {"grpc://": ("grpc", False), "grpcs://": ("grpc", True), "http://": ("http", False), "https://": ("http", True)}


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str, bool | None]:
    """``grpc[s]://host:port`` / ``http[s]://host:port`` / ``host:port`` -> (host:port, protocol, TLS),
    TLS None for a bare ``host:port`` (the caller's TLS files decide)."""
    for scheme, (proto, tls) in _SCHEMES.items():
        if url.startswith(scheme):
            if protocol is not None and protocol != proto:
                raise ServerError(f"{url} is a {proto} URL, but protocol {protocol!r} was asked for")
            return url[len(scheme):].rstrip("/"), proto, tls
    if "://" in url:
        raise ServerError(f"unsupported URL scheme in {url!r}: use grpc://, grpcs://, http:// or https://HOST:PORT, "
                          "or HOST:PORT")
    protocol = protocol or "grpc"
    if protocol not in PROTOCOLS:
        raise ServerError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return url.rstrip("/"), protocol, None


def probe_tls(hostport: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Does ``hostport`` speak TLS? "tls", "plaintext", or None when nothing answers there.

    One TCP connection and a handshake that checks no certificate: a diagnostic run after a failure,
    to name the mismatch, never a channel that carries data."""
    host, _, port = hostport.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except (OSError, ValueError):
        return None
    try:
        with ctx.wrap_socket(sock, server_hostname=host.strip("[]")):
            return "tls"
    except ssl.SSLError:
        return "plaintext"  # WRONG_VERSION_NUMBER, or Triton's HTTP port closing on a ClientHello
    except OSError:
        return "plaintext"  # reset or closed without a TLS answer
    finally:
        sock.close()


@dataclass(frozen=True)
class Colorized:
    """The ``colorize`` endpoint's answer for one image."""

    data: bytes  # the encoded image (PNG unless another format was asked for)
    notes: tuple[Note, ...] = ()


def _other_protocol_answers(url: str, protocol: str) -> bool:
    """Whether ``url`` answers Triton's *other* protocol (a gRPC client pointed at the HTTP port, or
    the reverse): one quick health check (open to anyone, even with an API key), no retries."""
    try:
        if protocol == "grpc":
            import tritonclient.http as other

            client = other.InferenceServerClient(url, connection_timeout=2.0, network_timeout=2.0)
        else:
            import tritonclient.grpc as other

            client = other.InferenceServerClient(url)
        try:
            return bool(client.is_server_live(**({"client_timeout": 2.0} if protocol == "http" else {})))
        finally:
            client.close()
    except Exception:  # any failure means "no, not that either"
        return False


class RemoteStages:
    """The ``colorize`` endpoint and the ``<family>`` ensemble of a Triton server; connects and checks on creation.

    ``endpoint=True`` (the thin client) requires only the endpoint, serving ``family``; otherwise the
    family's ensemble is required and checked against ``assets`` (file -> sha256) and ``geometry``.

    ``api_key`` (a string or an ``ApiKey``) goes with every call; ``tls`` gives the CA (and a client
    certificate for mutual TLS) of a ``grpcs://``/``https://`` server, and turns TLS on for a bare
    ``host:port``. ``wait_s`` is how long a call waits for a server that went away after the
    connection was made (0: give up after ``retries``)."""

    def __init__(
        self,
        url: str,
        protocol: str | None = None,
        family: str = families.DEFAULT_FAMILY,
        assets: Mapping[str, str] | None = None,
        retries: int = 3,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_in_flight: int = 8,
        geometry: ModelGeometry | None = None,
        endpoint: bool = False,
        api_key: ApiKey | str | None = None,
        tls: TlsFiles | None = None,
        wait_s: float = 0.0,
    ):
        assert retries >= 0 and timeout_s > 0 and max_in_flight >= 1 and wait_s >= 0
        self.url, self.protocol, scheme_tls = parse_url(url, protocol)
        if scheme_tls is False and tls is not None:
            secure = "grpcs" if self.protocol == "grpc" else "https"
            raise TlsError(f"{url} is a plaintext URL but TLS files were given: use {secure}://{self.url}")
        self.tls: TlsFiles | None = tls if tls is not None else (TlsFiles() if scheme_tls else None)
        self._api_key = ApiKey.of(api_key)
        self.family = family
        self.endpoint = endpoint
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.wait_s = wait_s
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None  # when the server went away, while it is away
        self._connected = False
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="langcolor-remote")
        self._colorize_checked = False
        self.geometry: ModelGeometry | None = None
        self.served_weights_sha256: str | None = None
        try:
            self._connect(assets, geometry)
        except BaseException:
            self.close()
            raise

    # -- connection and checks --------------------------------------------------------------------
    def _module(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    @property
    def _headers(self) -> dict[str, str] | None:
        """The key, as Triton's restricted APIs read it on this protocol (built per call, never stored)."""
        if self._api_key is None:
            return None
        return {(GRPC_KEY_HEADER if self.protocol == "grpc" else HTTP_KEY_HEADER): self._api_key.bearer()}

    def _new_client(self):
        module = self._module()
        tls = self.tls
        if self.protocol == "grpc":
            if tls is None:
                return module.InferenceServerClient(self.url)
            import grpc

            ca, key, cert = tls.read()
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            return module.InferenceServerClient(self.url, creds=creds)
        kwargs = {}
        if tls is not None:
            from gevent import ssl as gssl

            def context():  # verified against the CA given, else the system's (tritonclient's own default verifies nothing)
                ctx = gssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
                if tls.cert is not None:
                    ctx.load_cert_chain(str(tls.cert), str(tls.key))
                return ctx

            kwargs = {"ssl": True, "ssl_context_factory": context}
        return module.InferenceServerClient(
            self.url, connection_timeout=min(10.0, self.timeout_s), network_timeout=self.timeout_s, **kwargs)

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        """Forget this thread's client: the next call opens a fresh connection (a gRPC channel that saw
        the server go would otherwise wait out its own reconnect backoff, up to minutes)."""
        client = getattr(self._local, "client", None)
        if client is None:
            return
        self._local.client = None
        with self._clients_lock:
            if client in self._clients:
                self._clients.remove(client)
        try:
            client.close()
        except Exception:  # closing a dead channel must not mask the caller's error
            pass

    def _where(self) -> str:
        return f"Triton server at {self.url} ({self.protocol}{', TLS' if self.tls else ''})"

    def _connect(self, assets: Mapping[str, str] | None, geometry: ModelGeometry | None) -> None:
        # The first contact: a mismatch (TLS, protocol) is named at its first failure, not after the retries.
        live = self._retry(lambda c: c.is_server_live(headers=self._headers), what="health check", diagnose=True)
        if not live:
            raise self._diagnose(None) or ServerUnavailableError(f"{self._where()} is not live")
        if self.endpoint:
            self._check_endpoint()
        else:
            self._check_ensemble(assets, geometry)
        self._connected = True
        log.debug("connected to %s, model '%s' ready", self._where(), self.family)

    def _not_tls(self) -> TlsError:
        return TlsError(f"{self.url} does not speak TLS: use {self.protocol}://{self.url} (plaintext), or the port "
                        "of the TLS proxy in front of it")

    def _diagnose(self, error: Exception | None) -> ServerError | None:
        """Why the first contact failed, when it is not a server that is down: TLS on one side only, a
        client certificate refused, or a port that speaks Triton's other protocol."""
        speaks = probe_tls(self.url)
        if speaks is None:
            return None  # nothing listens: down or starting, the retries are for that
        scheme = self.protocol + ("s" if speaks == "tls" else "")
        if speaks == "tls" and self.tls is None:
            return TlsError(f"{self.url} speaks TLS and this client does not: use {scheme}://{self.url} "
                            "(with --tls-ca FILE when its certificate is not from a public CA)")
        if speaks == "plaintext" and self.tls is not None:
            if self.protocol == "grpc" and _other_protocol_answers(self.url, self.protocol):
                return ServerUnavailableError(f"{self.url} answers Triton's HTTP protocol, not GRPC: use http://{self.url}")
            return self._not_tls()
        if speaks == "tls":  # both speak TLS and the server still hung up: it wants another client certificate
            if error is not None and _tls_failure(error) == "untrusted":
                return None  # the server's certificate is the problem, not ours: _translate says so
            if isinstance(error, ssl.SSLError) or (error is not None and "Socket closed" in _message(error)):
                have = "the client certificate given" if self.tls.cert else "no client certificate (--tls-cert, --tls-key)"
                return TlsError(f"{self._where()} closed the TLS connection: it asks for a client certificate signed "
                                f"by a CA it trusts (mutual TLS), and this client sent {have}")
            return None
        other = "http" if self.protocol == "grpc" else "grpc"
        if _other_protocol_answers(self.url, self.protocol):
            return ServerUnavailableError(
                f"{self.url} answers Triton's {other.upper()} protocol, not {self.protocol.upper()}: "
                f"use {other}://{self.url} (or --protocol {other})"
            )
        return None

    def _check_endpoint(self) -> None:
        self._require_ready(names.COLORIZE_MODEL)
        self._colorize_checked = True
        params = self._parameters(names.COLORIZE_MODEL)
        served = [f for f in params.get(names.PARAM_FAMILIES, "").split(",") if f]
        if self.family not in served:
            raise ModelNotReadyError(
                f"the colorize endpoint on {self._where()} does not serve '{self.family}' "
                f"(it serves {', '.join(served) or 'nothing'})"
            )
        self.served_weights_sha256 = params.get(names.PARAM_WEIGHTS_PREFIX + self.family)
        self.max_batch_size = int(self._config(names.COLORIZE_MODEL).get("max_batch_size", 0)) or 1

    def _check_ensemble(self, assets: Mapping[str, str] | None, geometry: ModelGeometry | None) -> None:
        self._require_ready(self.family)
        params = self._parameters(self.family)
        self.served_weights_sha256 = params.get(names.PARAM_WEIGHTS_SHA256)
        if names.PARAM_GEOMETRY in params:
            self.geometry = ModelGeometry.from_dict(json.loads(params[names.PARAM_GEOMETRY]))
        served_assets = json.loads(params.get(names.PARAM_ASSETS, "{}"))
        if names.PARAM_TOKENIZER_SHA256 in params:  # repositories written before assets were declared
            served_assets.setdefault(TOKENIZER_FILE, params[names.PARAM_TOKENIZER_SHA256])
        for name, digest in (assets or {}).items():
            served = served_assets.get(name)
            if served is None:
                raise TokenizerMismatchError(
                    f"model '{self.family}' on {self._where()} does not declare its {name} "
                    f"(no hash in its config parameters); refusing to send tensors it may not read the same way"
                )
            if served != digest:
                raise TokenizerMismatchError(
                    f"{'tokenizer' if name == TOKENIZER_FILE else name} mismatch: model '{self.family}' on "
                    f"{self._where()} uses {name} sha256 {served[:12]}..., this client has {digest[:12]}...; "
                    "use the files from the served model repository"
                )
        if geometry is not None and self.geometry is not None and geometry != self.geometry:
            # Caught here, before any pixel is sent, rather than as a shape error on the first request.
            raise ModelMismatchError(
                f"model mismatch: '{self.family}' on {self._where()} has {_geometry_text(self.geometry)}, "
                f"this client's manifest has {_geometry_text(geometry)}; use the served model repository"
            )
        self.geometry = self.geometry or geometry
        self.max_batch_size = int(self._config(self.family).get("max_batch_size", 0)) or 1

    def _require_ready(self, model: str) -> None:
        if self._retry(lambda c: c.is_model_ready(model, headers=self._headers), what=f"readiness of '{model}'"):
            return
        raise ModelNotReadyError(f"model '{model}' is not ready on {self._where()}: {self._reason(model)}")

    def _reason(self, model: str) -> str:
        """Triton's own words for why ``model`` is not ready, from the repository index."""
        try:
            kwargs = {"as_json": True} if self.protocol == "grpc" else {}
            index = self._client().get_model_repository_index(headers=self._headers, **kwargs)
        except Exception as e:  # the index is a courtesy; the readiness answer already failed
            if _is_auth_failure(e):  # a server with an API key keeps its index for the admin key
                return "state unknown (the server's repository index needs its admin key)"
            return f"state unknown ({_message(e)})"
        entries = index.get("models", []) if isinstance(index, dict) else index
        for m in entries:
            if m.get("name") == model:
                state, reason = m.get("state") or "not loaded", m.get("reason", "")
                return f"{state}: {reason.split(chr(10) * 2 + 'At:')[0].strip()}" if reason else state
        return "no such model in the server's repository"

    def _config(self, model: str) -> dict:
        if self.protocol == "grpc":
            cfg = self._retry(lambda c: c.get_model_config(model, as_json=True, headers=self._headers),
                              what=f"config of '{model}'")
            return cfg.get("config", cfg)
        return self._retry(lambda c: c.get_model_config(model, headers=self._headers), what=f"config of '{model}'")

    def _parameters(self, model: str) -> dict[str, str]:
        raw = self._config(model).get("parameters", {}) or {}
        # HTTP JSON uses string_value, gRPC's JSON rendering uses stringValue.
        return {k: v.get("string_value", v.get("stringValue", "")) for k, v in raw.items()}

    # -- retries and error translation -------------------------------------------------------------
    def _retry(self, call: Callable, *, what: str, model: str | None = None, diagnose: bool = False):
        """``call(client)``; transport failures retried ``retries`` times with backoff and, once
        connected, for up to ``wait_s`` seconds on fresh connections (a server restarting).
        ``diagnose``: look for a TLS or protocol mismatch at the first failure."""
        delay = self.backoff_s
        first_failure: float | None = None
        attempt = 0
        while True:
            try:
                result = call(self._client())
            except Exception as e:  # tritonclient raises its own, socket and gevent errors
                if not _is_transient(e):
                    # An HTTP client at a gRPC port fails to parse the answer: not transient, still a mismatch.
                    mismatch = self._diagnose(e) if diagnose and attempt == 0 else None
                    raise (mismatch or self._translate(e, what, model, attempt)) from e
                if diagnose and attempt == 0:
                    mismatch = self._diagnose(e)
                    if mismatch is not None:
                        raise mismatch from e
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                waited = now - first_failure
                if attempt < self.retries:
                    log.warning("%s: %s failed (%s); retry %d/%d in %.2f s", self._where(), what, _message(e),
                                attempt + 1, self.retries, delay)
                elif self._connected and waited < self.wait_s:
                    self._outage_started(e)
                    delay = min(delay, self.wait_s - waited)
                    log.debug("%s: %s still failing after %.1f s (%s)", self._where(), what, waited, _message(e))
                else:
                    raise self._translate(e, what, model, attempt, waited if self._connected and self.wait_s else None) from e
                self._drop_client()
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                attempt += 1
                continue
            if first_failure is not None:
                self._outage_ended()
            return result

    def _outage_started(self, e: Exception) -> None:
        with self._outage_lock:
            if self._outage_since is not None:
                return
            self._outage_since = time.monotonic()
        log.warning("%s went away (%s); waiting up to %.0f s for it to come back, then carrying on where this "
                    "run is", self._where(), _message(e), self.wait_s)

    def _outage_ended(self) -> None:
        with self._outage_lock:
            since, self._outage_since = self._outage_since, None
        if since is not None:
            log.warning("%s is back after %.1f s; carrying on", self._where(), time.monotonic() - since)

    def _translate(self, e: Exception, what: str, model: str | None, attempt: int,
                   waited: float | None = None) -> ServerError:
        if _is_auth_failure(e):
            said = ("no API key was sent: give --api-key-file FILE or set $LANGCOLOR_API_KEY"
                    if self._api_key is None else "the API key sent is not the one it expects")
            return AuthenticationError(f"{self._where()} refused {what}: {said}")
        tls = _tls_failure(e)
        if tls == "not-tls":
            return self._not_tls()
        if tls == "untrusted":
            ca = f"the CA in {self.tls.ca}" if self.tls and self.tls.ca else "the system's CAs (give --tls-ca FILE)"
            return TlsError(f"{self._where()}: the server's certificate is not trusted: not signed by {ca}, or not "
                            f"issued for {self.url.rpartition(':')[0]} ({_tls_reason(e, _TLS_UNTRUSTED)})")
        if tls is not None:
            return TlsError(f"{self._where()}: the TLS handshake failed ({_tls_reason(e, _TLS_OTHER)}); does the "
                            "server ask for a client certificate (--tls-cert, --tls-key) signed by a CA it trusts?")
        if _is_too_large(e):
            return RequestTooLargeError(f"{self._where()} refused {what}: the request is larger than the server "
                                        f"accepts (a proxy's request body limit, e.g. nginx client_max_body_size)")
        if _is_transient(e):
            if model is not None and self._server_live():
                return ModelNotReadyError(f"model '{model}' is not ready on {self._where()}: {self._reason(model)}")
            if waited is not None:
                return ServerUnavailableError(f"{self._where()} is unreachable and did not come back within "
                                              f"{self.wait_s:.0f} s ({what}): {_message(e)}")
            tries = f" after {attempt + 1} attempts" if attempt else ""
            return ServerUnavailableError(f"{self._where()} is unreachable{tries} ({what}): {_message(e)}")
        if _is_not_found(e) and model is not None:
            return ModelNotReadyError(f"model '{model}' is not ready on {self._where()}: {self._reason(model)}")
        if "DEADLINE_EXCEEDED" in _status(e) or isinstance(e, TimeoutError):
            return ServerError(f"{self._where()} did not answer {what} within {self.timeout_s:.0f} s")
        return RequestRejectedError(f"{self._where()} rejected {what}: {_message(e)}")

    def _server_live(self) -> bool:
        try:
            return bool(self._client().is_server_live(headers=self._headers))
        except Exception:
            return False

    # -- requests ------------------------------------------------------------------------------------
    def _infer(self, model: str, inputs: Sequence[tuple[str, np.ndarray, str]], outputs: Sequence[str]) -> dict:
        module = self._module()

        def call(client):
            ins = []
            for name, array, dtype in inputs:
                i = module.InferInput(name, list(array.shape), dtype)
                if self.protocol == "http":
                    i.set_data_from_numpy(array, binary_data=True)
                else:
                    i.set_data_from_numpy(array)
                ins.append(i)
            if self.protocol == "http":
                outs = [module.InferRequestedOutput(n, binary_data=True) for n in outputs]
                result = client.infer(model, ins, outputs=outs, headers=self._headers)
            else:
                outs = [module.InferRequestedOutput(n) for n in outputs]
                result = client.infer(model, ins, outputs=outs, client_timeout=self.timeout_s, headers=self._headers)
            return {n: result.as_numpy(n) for n in outputs}

        return self._retry(call, what=f"a request to '{model}'", model=model)

    # -- the ensemble --------------------------------------------------------------------------------
    def _infer_chunk(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = ensemble_spec(self.geometry)
        inputs = [(t.name, feeds[t.name], t.client_dtype) for t in spec.inputs]
        return self._infer(self.family, inputs, spec.output_names)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ensemble's inputs (batched) -> its outputs; batches above ``max_batch_size`` are split
        and sent concurrently. The client validates what it can (the server validates again)."""
        if self.geometry is None:
            raise ServerError(f"model '{self.family}' on {self._where()} does not publish its geometry; "
                              "give the client its manifest (Colorizer(via='ensemble') loads it)")
        from .runtime import check_inputs

        check_inputs(feeds, self.geometry)
        n, step = next(iter(feeds.values())).shape[0], self.max_batch_size
        if n <= step:
            return self._infer_chunk(feeds)
        futures = [self._pool.submit(self._infer_chunk, {k: v[i : i + step] for k, v in feeds.items()})
                   for i in range(0, n, step)]
        parts = [f.result() for f in futures]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    def submit_infer(self, feeds: Mapping[str, np.ndarray]) -> Future:
        """``infer`` in the background: many in flight let Triton batch them together."""
        return self._pool.submit(self.infer, feeds)

    # -- the bytes endpoint --------------------------------------------------------------------------
    def colorize_bytes(self, image: bytes, caption: str | None = None, model: str | None = None,
                       fmt: str | None = None, **inputs: bytes | str) -> Colorized:
        """One encoded image (JPEG/PNG/TIFF) and the family's inputs -> the colorized file and notes.

        ``caption=`` and other keywords are the family's user inputs by field name (``reference=``
        takes the reference image's bytes). ``model`` is sent as ``MODEL``; None leaves it out and the
        server colours with its default family. ``fmt`` ("png", "jpeg") picks the output encoding."""
        if not self._colorize_checked:
            self._require_ready(names.COLORIZE_MODEL)
            self._colorize_checked = True
        values = {"caption": caption, **inputs} if caption is not None else dict(inputs)

        def one(value: bytes | str) -> np.ndarray:
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            return np.array([[data]], dtype=np.object_)  # [1, 1]

        sent = [(names.IMAGE, one(image), "BYTES")]
        sent += [(name.upper(), one(value), "BYTES") for name, value in values.items() if value is not None]
        if model is not None:
            sent.append((names.MODEL, one(model), "BYTES"))
        if fmt is not None:
            sent.append((names.FORMAT, one(fmt), "BYTES"))
        out = self._infer(names.COLORIZE_MODEL, sent, [names.COLORIZED, names.NOTES])
        notes = json.loads(bytes(out[names.NOTES].reshape(-1)[0]) or b"[]")
        return Colorized(bytes(out[names.COLORIZED].reshape(-1)[0]), tuple(Note.from_dict(n) for n in notes))

    def submit_colorize(self, image: bytes, caption: str | None = None, model: str | None = None,
                        fmt: str | None = None, **inputs) -> Future:
        return self._pool.submit(self.colorize_bytes, image, caption, model, fmt, **inputs)

    def colorize_many(self, items: Sequence[tuple[bytes, str]], model: str | None = None) -> list[Colorized | ServerError]:
        """(image, caption) pairs, all in flight at once (up to ``max_in_flight``); a rejected item
        gives its error, not a raise."""
        futures = [self.submit_colorize(img, cap, model) for img, cap in items]
        results: list[Colorized | ServerError] = []
        for f in futures:
            try:
                results.append(f.result())
            except RequestRejectedError as e:
                results.append(e)
        return results

    # -- lifetime --------------------------------------------------------------------------------------
    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:  # closing a dead channel must not mask the caller's error
                pass

    def __enter__(self) -> "RemoteStages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
