"""The served model, over gRPC or HTTP, with the same ``infer_ab`` as the in-process ``OnnxStages``.

Before any pixel leaves the client, ``RemoteStages`` checks, in order: the server answers (retried
with backoff), the ``<family>`` ensemble is READY (else Triton's reason from the repository index),
the tokenizer hash in the ensemble's config ``parameters`` equals the client's
(``TokenizerMismatchError``), and, when the caller gives its manifest's geometry, the served one is
the same (``ModelMismatchError``). Token ids mean nothing across tokenizers: a mismatch would colour
"red" with the id of some other word, silently.

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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np

from .errors import ServerError, TokenizerMismatchError
from .spec import AB_NAME, L_NAME, TOKENS_NAME, ModelGeometry, ensemble_spec

# Names of the bytes endpoint and of the ensemble's config parameters, declared once with the
# configs they describe (that module imports neither torch nor onnx).
from langcolor.export.triton_config import (  # noqa: E402
    CAPTION_NAME,
    COLORIZE_MODEL,
    COLORIZED_NAME,
    IMAGE_NAME,
    MODEL_NAME,
    PARAM_GEOMETRY,
    PARAM_TOKENIZER_SHA256,
    PARAM_WEIGHTS_SHA256,
)

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
    return (f"image size {g.image_size}, {g.max_tokens} tokens, vocabulary {g.vocab_size}, "
            f"features {list(g.feature_shape)}")


def _strip_scheme(url: str) -> str:
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            return url[len(scheme):].rstrip("/")
    return url.rstrip("/")


class RemoteStages:
    """``infer_ab`` and ``colorize_bytes`` against a Triton server; connects and checks on creation."""

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        family: str = "lcode",
        tokenizer_sha256: str | None = None,
        retries: int = 3,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_in_flight: int = 8,
        geometry: ModelGeometry | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ServerError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        assert retries >= 0 and timeout_s > 0 and max_in_flight >= 1
        self.url = _strip_scheme(url)
        self.protocol = protocol
        self.family = family
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="langcolor-remote")
        self._colorize_checked = False
        try:
            self._connect(tokenizer_sha256, geometry)
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

    def _connect(self, tokenizer_sha256: str | None, geometry: ModelGeometry | None = None) -> None:
        live = self._retry(lambda c: c.is_server_live(), what="health check")
        if not live:
            raise ServerUnavailableError(f"{self._where()} is not live")
        self._require_ready(self.family)
        params = self._parameters(self.family)
        self.served_tokenizer_sha256 = params.get(PARAM_TOKENIZER_SHA256)
        self.served_weights_sha256 = params.get(PARAM_WEIGHTS_SHA256)
        self.geometry: ModelGeometry | None = None
        if PARAM_GEOMETRY in params:
            g = json.loads(params[PARAM_GEOMETRY])
            self.geometry = ModelGeometry(**{**g, "feature_shape": tuple(g["feature_shape"])})
        if tokenizer_sha256 is not None:
            if self.served_tokenizer_sha256 is None:
                raise TokenizerMismatchError(
                    f"model '{self.family}' on {self._where()} does not declare its tokenizer "
                    f"(no '{PARAM_TOKENIZER_SHA256}' parameter); refusing to send token ids it may not share"
                )
            if self.served_tokenizer_sha256 != tokenizer_sha256:
                raise TokenizerMismatchError(
                    f"tokenizer mismatch: model '{self.family}' on {self._where()} uses tokenizer sha256 "
                    f"{self.served_tokenizer_sha256[:12]}..., this client has {tokenizer_sha256[:12]}...; "
                    "use the tokenizer.json from the served model repository"
                )
        if geometry is not None and self.geometry is not None and geometry != self.geometry:
            # Caught here, before any pixel is sent, rather than as a shape error on the first request.
            raise ModelMismatchError(
                f"model mismatch: '{self.family}' on {self._where()} has {_geometry_text(self.geometry)}, "
                f"this client's manifest has {_geometry_text(geometry)}; use the served model repository"
            )
        self.max_batch_size = int(self._config(self.family).get("max_batch_size", 0)) or 1
        log.debug("connected to %s, model '%s' ready", self._where(), self.family)

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

    # -- the ensemble --------------------------------------------------------------------------------
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

    def _validate(self, l_small: np.ndarray, tokens: np.ndarray) -> None:
        if self.geometry is None:
            return  # the server checks; we only know its contract when it publishes the geometry
        l_spec, t_spec = ensemble_spec(self.geometry).inputs
        l_spec.validate(l_small)
        t_spec.validate(tokens)

    def _infer_chunk(self, l_small: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        out = self._infer(self.family, [(L_NAME, l_small, "FP32"), (TOKENS_NAME, tokens, "INT64")], [AB_NAME])
        return out[AB_NAME]  # [b, 2, S, S]

    def infer_ab(self, l_small: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """L [B,1,S,S] float32 in [0,100], tokens [B,T] int64 -> ab [B,2,S,S] float32 (Lab units)."""
        self._validate(l_small, tokens)
        if l_small.shape[0] != tokens.shape[0]:
            raise RequestRejectedError(f"L has {l_small.shape[0]} images but TOKENS has {tokens.shape[0]} captions")
        n, step = l_small.shape[0], self.max_batch_size
        if n <= step:
            return self._infer_chunk(l_small, tokens)
        futures = [self._pool.submit(self._infer_chunk, l_small[i : i + step], tokens[i : i + step]) for i in range(0, n, step)]
        return np.concatenate([f.result() for f in futures], axis=0)  # [B, 2, S, S]

    def submit_ab(self, l_small: np.ndarray, tokens: np.ndarray) -> Future:
        """``infer_ab`` in the background: many in flight let Triton batch them together."""
        return self._pool.submit(self.infer_ab, l_small, tokens)

    # -- the bytes endpoint --------------------------------------------------------------------------
    def colorize_bytes(self, image: bytes, caption: str, model: str | None = None) -> bytes:
        """One encoded image (JPEG/PNG/TIFF) and a caption -> a PNG at the input's resolution.

        ``model`` ("lcode", "lcoins") is sent as the endpoint's ``MODEL`` input; None leaves it out
        and the server colours with its default family (``family`` above only names the ensemble
        ``infer_ab`` talks to)."""
        if not self._colorize_checked:
            self._require_ready(COLORIZE_MODEL)
            self._colorize_checked = True
        img = np.array([[bytes(image)]], dtype=np.object_)  # [1, 1]
        cap = np.array([[caption.encode("utf-8")]], dtype=np.object_)  # [1, 1]
        inputs = [(IMAGE_NAME, img, "BYTES"), (CAPTION_NAME, cap, "BYTES")]
        if model is not None:
            inputs.append((MODEL_NAME, np.array([[model.encode("utf-8")]], dtype=np.object_), "BYTES"))  # [1, 1]
        out = self._infer(COLORIZE_MODEL, inputs, [COLORIZED_NAME])
        return bytes(out[COLORIZED_NAME].reshape(-1)[0])

    def submit_colorize(self, image: bytes, caption: str, model: str | None = None) -> Future:
        return self._pool.submit(self.colorize_bytes, image, caption, model)

    def colorize_many(self, items: Sequence[tuple[bytes, str]], model: str | None = None) -> list[bytes | ServerError]:
        """Every item in flight at once (up to ``max_in_flight``); a rejected item gives its error, not a raise."""
        futures = [self.submit_colorize(img, cap, model) for img, cap in items]
        results: list[bytes | ServerError] = []
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
