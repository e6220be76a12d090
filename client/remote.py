"""The served model, over gRPC or HTTP: the ``colorize`` endpoint (bytes in, bytes out) or the
``<family>`` ensemble (tensors, the same ``infer`` as the in-process ``OnnxStages``).

The protocol comes from the URL's scheme (``grpc://host:8001``, ``http://host:8000``), or from
``protocol`` for a bare ``host:port`` (gRPC by default). A port that answers the other protocol is
named as such rather than reported as unreachable.

Before any pixel leaves the client, ``RemoteStages`` checks, in order: the server answers (retried
with backoff), the model it will call is READY (else Triton's reason from the repository index);
for the endpoint, that it serves the family; for the ensemble, that the hashes of the conditioner's
files in the ensemble's config ``parameters`` equal the client's (``TokenizerMismatchError``) and,
when the caller gives its manifest's geometry, that the served one is the same
(``ModelMismatchError``). Token ids mean nothing across tokenizers: a mismatch would colour "red"
with the id of some other word, silently.

Retries are for transport failures only (connection refused or reset, gRPC UNAVAILABLE): a request
Triton *rejected* (wrong shape, bad image, empty caption) fails at once with Triton's message.
Requests larger than the ensemble's ``max_batch_size`` are split and sent concurrently; the
``submit_*`` methods return futures so that many requests can be in flight for Triton's dynamic
batcher to group. Each worker thread owns its own tritonclient (the HTTP client is not
thread-safe; separate gRPC channels also avoid head-of-line blocking on one connection).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np

from . import families, names
from .errors import ServerError, TokenizerMismatchError
from .families import Note
from .spec import TOKENIZER_FILE, ModelGeometry, ensemble_spec

log = logging.getLogger(__name__)

T = TypeVar("T")

PROTOCOLS = ("grpc", "http")

DEFAULT_TIMEOUT_S = 60.0  # per request; a 2-core CPU server with a queue can take seconds
DEFAULT_BACKOFF_S = 0.25  # first retry delay; doubles each attempt
MAX_BACKOFF_S = 8.0


class ServerUnavailableError(ServerError):
    """The server could not be reached (after retries)."""


class ModelNotReadyError(ServerError):
    """The server is up but the model is not loaded or failed to load."""


class ModelMismatchError(ServerError):
    """The served model's geometry (image size, caption length, vocabulary) differs from the client's."""


class RequestRejectedError(ServerError):
    """Triton refused this request (shape, dtype, undecodable image, bad caption): do not retry it."""


def _status(e: Exception) -> str:
    status = getattr(e, "status", None)
    return str(status() if callable(status) else status or "")


try:  # tritonclient's HTTP transport; absent when only the gRPC extra is installed
    from geventhttpclient.response import HTTPConnectionClosed as _HTTPConnectionClosed
except ImportError:  # pragma: no cover
    class _HTTPConnectionClosed(Exception):  # type: ignore[no-redef]
        pass


def _is_transient(e: Exception) -> bool:
    """Worth retrying: the request never reached a model, or the server is restarting."""
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


_SCHEMES = {"grpc://": "grpc", "http://": "http"}


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """``grpc://host:port`` / ``http://host:port`` / ``host:port`` -> (host:port, protocol)."""
    for scheme, proto in _SCHEMES.items():
        if url.startswith(scheme):
            if protocol is not None and protocol != proto:
                raise ServerError(f"{url} is a {proto} URL, but protocol {protocol!r} was asked for")
            return url[len(scheme):].rstrip("/"), proto
    if "://" in url:
        raise ServerError(f"unsupported URL scheme in {url!r}: use grpc://HOST:PORT, http://HOST:PORT or HOST:PORT")
    protocol = protocol or "grpc"
    if protocol not in PROTOCOLS:
        raise ServerError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return url.rstrip("/"), protocol


@dataclass(frozen=True)
class Colorized:
    """The ``colorize`` endpoint's answer for one image."""

    data: bytes  # the encoded image (PNG unless another format was asked for)
    notes: tuple[Note, ...] = ()


def _other_protocol_answers(url: str, protocol: str) -> bool:
    """Whether ``url`` answers Triton's *other* protocol (a gRPC client pointed at the HTTP port, or
    the reverse): one quick health check, no retries."""
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
    family's ensemble is required and checked against ``assets`` (file -> sha256) and ``geometry``."""

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
    ):
        assert retries >= 0 and timeout_s > 0 and max_in_flight >= 1
        self.url, self.protocol = parse_url(url, protocol)
        self.family = family
        self.endpoint = endpoint
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()
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

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            module = self._module()
            if self.protocol == "grpc":
                client = module.InferenceServerClient(self.url)
            else:
                client = module.InferenceServerClient(
                    self.url, connection_timeout=min(10.0, self.timeout_s), network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _where(self) -> str:
        return f"Triton server at {self.url} ({self.protocol})"

    def _connect(self, assets: Mapping[str, str] | None, geometry: ModelGeometry | None) -> None:
        try:
            live = self._retry(lambda c: c.is_server_live(), what="health check")
        except ServerUnavailableError as e:
            other = "http" if self.protocol == "grpc" else "grpc"
            if _other_protocol_answers(self.url, self.protocol):
                raise ServerUnavailableError(
                    f"{self.url} answers Triton's {other.upper()} protocol, not {self.protocol.upper()}: "
                    f"use {other}://{self.url} (or --protocol {other})"
                ) from e
            raise
        if not live:
            raise ServerUnavailableError(f"{self._where()} is not live")
        if self.endpoint:
            self._check_endpoint()
        else:
            self._check_ensemble(assets, geometry)
        log.debug("connected to %s, model '%s' ready", self._where(), self.family)

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
        if self._retry(lambda c: c.is_model_ready(model), what=f"readiness of '{model}'"):
            return
        raise ModelNotReadyError(f"model '{model}' is not ready on {self._where()}: {self._reason(model)}")

    def _reason(self, model: str) -> str:
        """Triton's own words for why ``model`` is not ready, from the repository index."""
        try:
            index = self._client().get_model_repository_index(**({"as_json": True} if self.protocol == "grpc" else {}))
        except Exception as e:  # the index is a courtesy; the readiness answer already failed
            return f"state unknown ({_message(e)})"
        entries = index.get("models", []) if isinstance(index, dict) else index
        for m in entries:
            if m.get("name") == model:
                state, reason = m.get("state") or "not loaded", m.get("reason", "")
                return f"{state}: {reason.split(chr(10) * 2 + 'At:')[0].strip()}" if reason else state
        return "no such model in the server's repository"

    def _config(self, model: str) -> dict:
        if self.protocol == "grpc":
            cfg = self._retry(lambda c: c.get_model_config(model, as_json=True), what=f"config of '{model}'")
            return cfg.get("config", cfg)
        return self._retry(lambda c: c.get_model_config(model), what=f"config of '{model}'")

    def _parameters(self, model: str) -> dict[str, str]:
        raw = self._config(model).get("parameters", {}) or {}
        # HTTP JSON uses string_value, gRPC's JSON rendering uses stringValue.
        return {k: v.get("string_value", v.get("stringValue", "")) for k, v in raw.items()}

    # -- retries and error translation -------------------------------------------------------------
    def _retry(self, call: Callable, *, what: str, model: str | None = None):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return call(self._client())
            except Exception as e:  # tritonclient raises its own, socket and gevent errors
                if _is_transient(e) and attempt < self.retries:
                    log.warning("%s: %s failed (%s); retry %d/%d in %.2f s", self._where(), what, _message(e),
                                attempt + 1, self.retries, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_S)
                    continue
                raise self._translate(e, what, model, attempt) from e
        raise AssertionError("unreachable")

    def _translate(self, e: Exception, what: str, model: str | None, attempt: int) -> ServerError:
        if _is_transient(e):
            if model is not None and self._server_live():
                return ModelNotReadyError(f"model '{model}' is not ready on {self._where()}: {self._reason(model)}")
            tries = f" after {attempt + 1} attempts" if attempt else ""
            return ServerUnavailableError(f"{self._where()} is unreachable{tries} ({what}): {_message(e)}")
        if _is_not_found(e) and model is not None:
            return ModelNotReadyError(f"model '{model}' is not ready on {self._where()}: {self._reason(model)}")
        if "DEADLINE_EXCEEDED" in _status(e) or isinstance(e, TimeoutError):
            return ServerError(f"{self._where()} did not answer {what} within {self.timeout_s:.0f} s")
        return RequestRejectedError(f"{self._where()} rejected {what}: {_message(e)}")

    def _server_live(self) -> bool:
        try:
            return bool(self._client().is_server_live())
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
                result = client.infer(model, ins, outputs=outs)
            else:
                outs = [module.InferRequestedOutput(n) for n in outputs]
                result = client.infer(model, ins, outputs=outs, client_timeout=self.timeout_s)
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
