"""How the command line reaches a server: the flags every command that talks to one shares, and the
secrets it may need (an API key, TLS files).

``langcolor colorize`` and ``langcolor batch`` (and any command a family brings) add these with
``add_server_flags``; ``connection_options`` turns what they say into the keyword arguments of
``Colorizer``/``RemoteStages``/``BatchOptions``.

The API key never travels on a command line (a process listing shows every argument to every local
user): it comes from a file (``--api-key-file``, ``$LANGCOLOR_API_KEY_FILE``) or from
``$LANGCOLOR_API_KEY``. It is held in an ``ApiKey``, whose ``repr`` and ``str`` never show it, so a
log line, an exception or a dataclass's repr that holds one cannot leak it.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import LangcolorError

API_KEY_ENV = "LANGCOLOR_API_KEY"  # the key itself
API_KEY_FILE_ENV = "LANGCOLOR_API_KEY_FILE"  # a file holding it
SECRET_ENV = (API_KEY_ENV, API_KEY_FILE_ENV)  # never handed on to tritonserver and its models
MIN_KEY_CHARS = 16
# A bearer token (RFC 6750 b64token): safe in an HTTP header and in gRPC metadata, never split by
# Triton's "<apis>:<header>=<value>" option syntax.
_KEY_SYNTAX = re.compile(r"[A-Za-z0-9._~+/-]+=*")
KEY_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE && chmod 600 FILE"


class ApiKey:
    """A shared secret: ``reveal()`` gives it to the one place that sends it; it never prints."""

    __slots__ = ("_value",)

    def __init__(self, value: str, source: str = "the API key"):
        if not isinstance(value, str) or not _KEY_SYNTAX.fullmatch(value):
            raise LangcolorError(f"{source} must be one token of letters, digits and . _ ~ + / - "
                                 f"(no spaces or line breaks inside); make one with: {KEY_HINT}")
        if len(value) < MIN_KEY_CHARS:
            raise LangcolorError(f"{source} has {len(value)} characters; use at least {MIN_KEY_CHARS}: {KEY_HINT}")
        self._value = value

    @classmethod
    def of(cls, key: "ApiKey | str | None") -> "ApiKey | None":
        return key if key is None or isinstance(key, ApiKey) else cls(key)

    def reveal(self) -> str:
        return self._value

    def bearer(self) -> str:
        """The header value every call carries: ``Bearer <key>``."""
        return f"Bearer {self._value}"

    def __repr__(self) -> str:
        return "ApiKey(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # a pickle is a copy of the secret on disk or on the wire
        raise TypeError("an ApiKey is not picklable")


def check_private_file(path: Path, what: str) -> Path:
    """``path`` exists, is a file, and other users can neither read nor write it (group write neither)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise LangcolorError(f"{what} {path}: {e.strerror or e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise LangcolorError(f"{what} {path} is not a file")
    if st.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise LangcolorError(f"{what} {path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                             f"run: chmod 600 {path}")
    return path


def read_key_file(path: Path | str, what: str = "API key file") -> ApiKey:
    """The key in ``path`` (one line; surrounding whitespace ignored), refused if others may read it."""
    path = check_private_file(Path(path), what)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LangcolorError(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from e
    return ApiKey(text.strip(), f"{what} {path}")


def api_key_from(file: Path | str | None, environ: dict | None = None) -> ApiKey | None:
    """``file`` if given, else ``$LANGCOLOR_API_KEY_FILE``, else ``$LANGCOLOR_API_KEY``, else None."""
    env = os.environ if environ is None else environ
    if file is not None:
        return read_key_file(file)
    if env.get(API_KEY_FILE_ENV):
        return read_key_file(env[API_KEY_FILE_ENV], f"${API_KEY_FILE_ENV}")
    if env.get(API_KEY_ENV):
        return ApiKey(env[API_KEY_ENV].strip(), f"${API_KEY_ENV}")
    return None


@dataclass(frozen=True)
class TlsFiles:
    """What a client needs to reach a TLS server: the CA that signed its certificate (None: the
    system's CAs) and, for mutual TLS, this client's certificate and private key (PEM files)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise LangcolorError("a client certificate needs its private key: give both --tls-cert and --tls-key")
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
                if not Path(value).is_file():
                    raise LangcolorError(f"TLS {name} file {value} does not exist")
        if self.key is not None:
            check_private_file(self.key, "TLS private key")

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(ca, key, cert) as PEM bytes, for gRPC's channel credentials."""
        def load(p: Path | None) -> bytes | None:
            return p.read_bytes() if p is not None else None

        return load(self.ca), load(self.key), load(self.cert)


def add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=None, metavar="URL",
                   help="use a Triton server instead of running in-process: grpc://HOST:PORT, http://HOST:PORT, "
                   "grpcs://HOST:PORT or https://HOST:PORT (TLS), or HOST:PORT with --protocol")
    p.add_argument("--protocol", choices=("grpc", "http"), default=None,
                   help="protocol for a bare HOST:PORT (default: grpc; a URL's scheme decides otherwise)")
    p.add_argument("--via", choices=("endpoint", "ensemble"), default="endpoint",
                   help="with --server: the colorize endpoint (bytes in, bytes out; no local model needed) or "
                   "the family's ensemble (tensors; prepares the photo here, needs the model repository)")
    group = p.add_argument_group("a server that asks for a key or speaks TLS")
    group.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                       help=f"file holding the server's API key, sent with every call (default: ${API_KEY_FILE_ENV}, "
                       f"or the key itself in ${API_KEY_ENV}); the file must not be readable by other users")
    group.add_argument("--tls-ca", type=Path, default=None, metavar="FILE",
                       help="PEM file of the CA that signed the server's certificate (default: the system's CAs); "
                       "implies TLS for a bare HOST:PORT")
    group.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                       help="this client's certificate (PEM), for a server that asks for one (mutual TLS)")
    group.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="the private key of --tls-cert (PEM)")


def connection_options(args: argparse.Namespace) -> dict:
    """``api_key`` and ``tls`` for ``Colorizer``/``BatchOptions``, from the flags and the environment."""
    tls_given = any(getattr(args, n, None) is not None for n in ("tls_ca", "tls_cert", "tls_key"))
    if args.server is None:
        if tls_given or getattr(args, "api_key_file", None) is not None:
            raise LangcolorError("--api-key-file and --tls-* go with --server (running in-process needs neither)")
        return {}
    tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key) if tls_given else None
    return {"api_key": api_key_from(getattr(args, "api_key_file", None)), "tls": tls}
