"""Safe defaults: loopback binding unless a token is set, a token check on every HTTP/WebSocket route,
Origin/Host checks against cross-site requests and DNS rebinding, body size limits, and the token kept
out of the server's logs. The threat model is in docs/security.md."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

ASGIApp = Any


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the server beyond this machine without a token (raises ValueError saying what to do)."""
    if not is_loopback(host) and not token:
        raise ValueError(
            f"refusing to listen on {host!r} without a token: anyone who can reach this address could run "
            "workflows and read outputs. Pass a token (latentworks serve --token SECRET, or the "
            "LATENTWORKS_TOKEN environment variable) or bind to 127.0.0.1."
        )


def request_token(scope: dict) -> str | None:
    """The token a request carries: ``Authorization: Bearer <token>`` or ``?token=<token>``."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


class TokenAuth:
    """Pure ASGI middleware: every http and websocket request must carry ``token`` (constant-time compare)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    def _ok(self, scope: dict) -> bool:
        given = request_token(scope)
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self._ok(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong token"})
            return
        body = json.dumps(
            {
                "error": {
                    "type": "unauthorized",
                    "message": "missing or wrong token: send 'Authorization: Bearer <token>' or add ?token=<token>",
                    "details": "",
                    "extra_info": {},
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Pure ASGI middleware: reject request bodies over a size limit with 413 (uploads get their own limit)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        # Multipart framing adds a little to the file itself.
        uploads = ("/upload/image", "/upload/mask")
        limit = self.max_upload_bytes + 65536 if path.endswith(uploads) else self.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _too_large(send, limit)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Any, limit: int) -> None:
    await _error(
        send,
        413,
        "request_too_large",
        f"request body is larger than the limit of {limit} bytes",
        {"limit": limit},
    )


async def _error(send: Any, status: int, type_: str, message: str, extra: dict | None = None) -> None:
    body = json.dumps(
        {"error": {"type": type_, "message": message, "details": "", "extra_info": extra or {}}}
    ).encode()
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


# -- cross-site requests and DNS rebinding ---------------------------------------------------------

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def split_host(value: str) -> tuple[str, str]:
    """("host", "port") from a Host header or netloc: 'Example.org:80' -> ('example.org', '80'),
    '[::1]:8188' -> ('::1', '8188'), 'localhost' -> ('localhost', '')."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, ""  # a bare IPv6 address or a name without a port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normalise_origin(origin: str) -> str | None:
    """'HTTP://Example.org:80/' -> 'http://example.org'; None for 'null' or anything that is not scheme://host."""
    origin = origin.strip().rstrip("/").lower()
    scheme, sep, netloc = origin.partition("://")
    if not sep or scheme not in ("http", "https") or not netloc or "/" in netloc or "@" in netloc:
        return None
    host, port = split_host(netloc)
    if not host:
        return None
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else "")


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _headers(scope: dict, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers", []) if key == name]


class OriginGuard:
    """Pure ASGI middleware against cross-site requests and DNS rebinding (HTTP and WebSocket).

    - ``Host`` must name this server: a loopback name (localhost, 127.0.0.1, [::1]), any IP address
      literal (a rebinding attack needs a DNS name the attacker controls, so an IP literal cannot be one),
      the bound host, or one of ``allowed_hosts`` ("*" allows any). Otherwise 403 ``forbidden_host``.
    - A request that carries ``Origin`` must come from the same origin (the Origin's host and port equal
      the ``Host`` header) or from one of ``allowed_origins`` ("*" allows any); ``Origin: null`` is
      refused. Otherwise 403 ``forbidden_origin``. Requests without ``Origin`` (curl, Python clients)
      pass, except a state-changing request that a browser marked ``Sec-Fetch-Site: cross-site``.
    A refused WebSocket is closed before the handshake completes, which clients see as HTTP 403.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.hosts = set(LOOPBACK_NAMES) | {split_host(h)[0] for h in allowed_hosts if h != "*"}
        self.any_origin = "*" in allowed_origins
        self.origins = {o for o in (normalise_origin(x) for x in allowed_origins if x != "*") if o}

    def host_ok(self, host_header: str | None) -> bool:
        if host_header is None or self.any_host:
            return True  # HTTP/1.0 without Host: no browser sends that
        host, _ = split_host(host_header)
        return host in self.hosts or _is_ip(host)

    def origin_ok(self, origin: str, host_header: str | None) -> bool:
        if self.any_origin:
            return True
        norm = normalise_origin(origin)
        if norm is None:
            return False
        if norm in self.origins:
            return True
        if host_header is None:
            return False
        scheme, _, netloc = norm.partition("://")
        o_host, o_port = split_host(netloc)
        h_host, h_port = split_host(host_header)
        default = _DEFAULT_PORTS[scheme]
        return o_host == h_host and (o_port or default) == (h_port or default)

    def refusal(self, scope: dict) -> tuple[str, str] | None:
        """(error type, message) when the request must be refused, else None."""
        hosts = _headers(scope, b"host")
        host = hosts[0] if hosts else None
        if len(hosts) > 1 or not self.host_ok(host):
            return (
                "forbidden_host",
                f"Host {host!r} is not a name of this server. Browse to http://127.0.0.1:PORT/ or "
                "http://localhost:PORT/, or start the server with --allow-host NAME for the name you use "
                "(a reverse proxy, a LAN name). This check blocks DNS-rebinding attacks.",
            )
        origins = _headers(scope, b"origin")
        origin = origins[0] if origins else None
        if origin is not None and (len(origins) > 1 or not self.origin_ok(origin, host)):
            return (
                "forbidden_origin",
                f"requests from the web page at {origin!r} are refused: only pages served by this server may "
                "call it. To allow another front end, start the server with --allow-origin ORIGIN "
                "(e.g. --allow-origin https://editor.example).",
            )
        method = scope.get("method", "GET")
        if (
            origin is None
            and method not in _SAFE_METHODS
            and _header(scope, b"sec-fetch-site") == "cross-site"
        ):
            return ("forbidden_origin", "cross-site requests from a browser are refused")
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            # Closing before accept makes the server answer the handshake with HTTP 403.
            await send({"type": "websocket.close", "code": 1008, "reason": refused[0]})
            return
        await _error(send, 403, refused[0], refused[1])


def browser_request(headers: Any) -> bool:
    """True when a request carries the headers browsers add (Origin or Sec-Fetch-*); scripts send neither."""
    return any(headers.get(h) is not None for h in ("origin", "sec-fetch-site", "sec-fetch-mode"))


# -- token redaction in server logs ----------------------------------------------------------------

_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"']*", re.IGNORECASE)


def redact_token(text: str) -> str:
    """'/ws?clientId=a&token=s3cret' -> '/ws?clientId=a&token=REDACTED'."""
    return _TOKEN_IN_QUERY.sub(r"\1REDACTED", text)


class RedactTokenFilter(logging.Filter):
    """Rewrites ``?token=...`` in log records (uvicorn logs request paths with their query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_token(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_token(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_log_redaction(logger_names: Iterable[str] = ("uvicorn.access", "uvicorn.error")) -> None:
    """Attach :class:`RedactTokenFilter` once to each named logger (idempotent)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokenFilter) for f in logger.filters):
            logger.addFilter(RedactTokenFilter())
