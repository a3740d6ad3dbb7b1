"""Access control: API keys with scopes, and a per-key rate limit (a pure ASGI middleware).

Keys come from `settings.api_keys` (CMNREC_API_KEYS, entries separated by ';') and/or the file
`settings.api_keys_file` (CMNREC_API_KEYS_FILE, one entry a line, '#' comments). An entry is

    <name> <scope>[,<scope>...] <key> [<requests per second>]

where `<key>` is the secret in clear or `sha256:<hex of the key's SHA-256>`; only the SHA-256 is
kept in memory. A request presents its key as `Authorization: Bearer <key>` or `X-API-Key: <key>`.

Scopes and what they open:
    events:write          POST /v1/events, POST /v1/events/batch
    recommendations:read  GET /v1/users/{id}/recommendations, GET /v1/users/{id}/events/{event_id}
    admin                 everything: DELETE /v1/users/{id}, /v1/model, /v1/admin/*, /metrics
                          (unless settings.metrics_public), /docs, /redoc, /openapi.json
/healthz and /readyz never need a key. No key -> 401 unauthorized; a key without the scope ->
403 forbidden; over the key's rate -> 429 rate_limited with Retry-After (a token bucket per key
and per worker process: with K workers a key may send up to K times its rate).

Without any key configured the service is open (anonymous, every scope, no rate limit): allowed
only when it listens on a loopback address (127.0.0.1, ::1, localhost) or with
settings.allow_anonymous; `check_access(settings)` refuses the other cases at start-up.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from dataclasses import dataclass, field
from enum import Enum

from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.errors import error_response
from service.ops.labels import ErrorCode
from service.ops.settings import Settings

log = logging.getLogger(__name__)


class ApiScope(str, Enum):
    EVENTS_WRITE = "events:write"
    RECOMMENDATIONS_READ = "recommendations:read"
    ADMIN = "admin"


class AuthConfigError(ValueError):
    """The API key settings cannot be used (a malformed entry, or anonymous on a public host)."""


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float | None = None) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class ApiKey:
    name: str
    scopes: frozenset[ApiScope]
    digest: str  # sha256 hex of the secret
    bucket: TokenBucket | None  # None: no rate limit


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_entry(line: str, settings: Settings) -> ApiKey:
    """One `name scopes key [rate]` entry."""
    parts = line.split()
    if len(parts) not in (3, 4):
        raise AuthConfigError(f"API key entry {parts[:1]}: expected `name scopes key [rate]`")
    name, scopes_text, secret = parts[:3]
    try:
        scopes = frozenset(ApiScope(s) for s in scopes_text.split(",") if s)
    except ValueError:
        raise AuthConfigError(f"API key {name!r}: unknown scope in {scopes_text!r} (known:"
                              f" {', '.join(s.value for s in ApiScope)})") from None
    if secret.startswith("sha256:"):
        digest = secret[len("sha256:"):].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise AuthConfigError(f"API key {name!r}: sha256: needs 64 hex digits")
    else:
        if len(secret) < 16:
            raise AuthConfigError(f"API key {name!r}: a key needs at least 16 characters")
        digest = key_digest(secret)
    try:
        rate = float(parts[3]) if len(parts) == 4 else settings.rate_limit_per_second
    except ValueError:
        raise AuthConfigError(f"API key {name!r}: rate {parts[3]!r} is not a number") from None
    if not math.isfinite(rate) or rate < 0:
        raise AuthConfigError(f"API key {name!r}: rate must be a finite number >= 0")
    bucket = TokenBucket(rate, max(settings.rate_limit_burst, 1)) if rate > 0 else None
    return ApiKey(name, scopes, digest, bucket)


def load_keys(settings: Settings) -> dict[str, ApiKey]:
    """digest -> ApiKey from the settings' entries and file."""
    lines: list[str] = []
    if settings.api_keys:
        lines.extend(settings.api_keys.split(";"))
    if settings.api_keys_file is not None:
        try:
            lines.extend(settings.api_keys_file.read_text(encoding="utf-8").splitlines())
        except OSError as error:
            raise AuthConfigError(f"CMNREC_API_KEYS_FILE: cannot read {settings.api_keys_file}:"
                                  f" {error}") from None
    keys: dict[str, ApiKey] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            key = parse_entry(line, settings)
            keys[key.digest] = key
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(settings: Settings) -> dict[str, ApiKey]:
    """The keys, or AuthConfigError when the service would be open to a network."""
    keys = load_keys(settings)
    if not keys:
        if not is_loopback(settings.host) and not settings.allow_anonymous:
            raise AuthConfigError(
                f"no API keys (CMNREC_API_KEYS / CMNREC_API_KEYS_FILE) while listening on"
                f" {settings.host}: anyone who reaches it could write and delete users; set keys,"
                " or CMNREC_ALLOW_ANONYMOUS=true to serve open on purpose")
        log.warning("no API keys configured: the API is open to every client that reaches %s",
                    settings.host)
    return keys


def required_scope(method: str, path: str, metrics_public: bool) -> ApiScope | None:
    """The scope a request needs; None: no key needed."""
    if path in ("/healthz", "/readyz"):
        return None
    if path == "/metrics":
        return None if metrics_public else ApiScope.ADMIN
    if path.startswith("/v1/events"):
        return ApiScope.EVENTS_WRITE
    if path.startswith("/v1/users/"):
        return ApiScope.ADMIN if method == "DELETE" else ApiScope.RECOMMENDATIONS_READ
    return ApiScope.ADMIN  # /v1/model, /v1/admin/*, /docs, /openapi.json and unknown paths


def presented_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
        elif name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


class AuthMiddleware:
    """401/403/429 before anything else runs (see the module docstring). `keys` empty: open."""

    def __init__(self, app: ASGIApp, keys: dict[str, ApiKey], metrics_public: bool) -> None:
        self.app = app
        self.keys = keys
        self.metrics_public = metrics_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope.get("method", ""), scope.get("path", ""),
                                self.metrics_public)
        if needed is None:
            await self.app(scope, receive, send)
            return
        secret = presented_key(scope)
        key = self.keys.get(key_digest(secret)) if secret else None
        if key is None:
            response = error_response(
                ErrorCode.UNAUTHORIZED, "an API key is required (Authorization: Bearer <key> or"
                " X-API-Key: <key>)" if secret is None else "unknown API key", "authorization",
                headers={"WWW-Authenticate": "Bearer"})
        elif needed not in key.scopes and ApiScope.ADMIN not in key.scopes:
            response = error_response(ErrorCode.FORBIDDEN, f"API key {key.name!r} lacks the"
                                      f" {needed.value} scope of this route", "authorization")
        else:
            if key.bucket is None:
                await self.app(scope, receive, send)
                return
            wait = key.bucket.take()
            if wait <= 0.0:
                await self.app(scope, receive, send)
                return
            response = error_response(
                ErrorCode.RATE_LIMITED, f"API key {key.name!r} is over its rate of"
                f" {key.bucket.rate:g} requests/s; retry after Retry-After seconds", None,
                headers={"Retry-After": str(max(1, math.ceil(wait)))})
        await response(scope, receive, send)
