"""Optional API-key auth for the public routes.

Off when no key is configured (local use). Behind a public load balancer, set
the key through the environment (MT5_API_KEY) or a file (api_key_file, e.g. a
mounted Kubernetes secret). Health and the static UI stay open so load balancers
and browsers can reach them; every API route needs `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

# Paths that need no key: health for load balancers, the static page and the API docs (no data in them).
OPEN_PATHS = frozenset({"/healthz", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
OPEN_PREFIXES = ("/ui/",)
ANONYMOUS = "anonymous"  # the caller when no key is configured: everyone is the same caller


def caller_of(request: Request) -> str:
    """Who is calling: `key:<digest of its key>` when a key is configured and matched, else ANONYMOUS (what owns a
    job)."""
    return str(request.scope.get("state", {}).get("caller", ANONYMOUS))


def load_api_key(env_var: str, key_file: str | None) -> str | None:
    """The configured key, or None when auth is off. A configured but empty key is an error, not 'off'."""
    if key_file:
        key = Path(key_file).read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"api_key_file {key_file} is empty")
        return key
    value = os.environ.get(env_var)
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"{env_var} is set but empty; unset it to turn auth off")
    return value.strip()


class ApiKeyAuth:
    """ASGI middleware: 401 with a fixed body unless the bearer token matches (constant-time)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_open(scope["path"]) or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            # Never the key itself: a digest names the caller in the job store and logs.
            scope.setdefault("state", {})["caller"] = "key:" + hashlib.sha256(self.expected).hexdigest()[:16]
            await self.app(scope, receive, send)
            return
        # The same answer for a missing, malformed or wrong key: nothing to learn from it.
        body = json.dumps({"detail": "missing or invalid API key"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _is_open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        # compare_digest on the whole token: time does not depend on where a guess goes wrong.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected)
