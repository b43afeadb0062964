"""Who is calling, and whether their key may call now: API keys, their limits, and their metrics.

Off when no key is configured (local use): everyone is the anonymous caller. Behind a public load balancer,
configure the single key (MT5_API_KEY or `api_key_file`, e.g. a mounted secret) and/or named keys with limits
(`api_keys_file`; serve_app/access/keys.py). Health and the static UI stay open so load balancers and browsers
can reach them; every API route needs `Authorization: Bearer <key>`. A limited key's requests are counted by the
KeyLedger deployment for the whole application; over a limit the answer is 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.access.keys import ANONYMOUS, Caller, KeyTable
from serve_app.access.usage import Refusal
from serve_app.deployments.key_ledger import LEDGER_TIMEOUT_S
from serve_app.deployments.key_metrics import KeyMetrics
from serve_app.ingress.body_limit import send_json

logger = logging.getLogger("ray.serve")

# Paths that need no key: health for load balancers, the static page and the API docs (no data in them).
OPEN_PATHS = frozenset({"/healthz", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
OPEN_PREFIXES = ("/ui/",)
# The POST routes that generate text: only these are refused once a key's daily tokens are spent. Classification
# (its label tokens in mode generate are few, and charged), a job's state and result, and the task list are not.
GENERATING_ROUTES = frozenset({"/augment", "/augment_batch", "/generate", "/jobs"})
LEDGER_WARNING_EVERY_S = 30.0


def caller_of_scope(scope: Scope) -> Caller:
    """The caller KeyAccess found for this request (ANONYMOUS with auth off)."""
    caller = scope.get("state", {}).get("caller", ANONYMOUS)
    return caller if isinstance(caller, Caller) else ANONYMOUS


def caller_of(request: Request) -> str:
    """Who owns what this request creates (a job): `team:<name>` for a named key, `key:<digest>` for the single key,
    `anonymous` when auth is off."""
    return caller_of_scope(request.scope).owner


def load_api_key(env_var: str, key_file: str | None) -> str | None:
    """The single unnamed key, or None. A configured but empty key is an error, not 'off'."""
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


class KeyLedgerClient:
    """The Ingress's side of the KeyLedger deployment: admission for limited keys, tokens charged after."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._warned = -float("inf")

    async def admit(self, caller: Caller, generates: bool) -> Refusal | None:
        if caller.limits.unlimited:
            return None
        try:
            refusal: Refusal | None = await asyncio.wait_for(
                self.handle.admit.remote(caller.name, caller.limits, generates), timeout=LEDGER_TIMEOUT_S
            )
        except Exception as exc:  # noqa: BLE001 - a budget is not a lock: a lost ledger must not stop every team
            self._warn(f"KeyLedger not reached ({exc!r}); {caller.name}'s request admitted uncounted")
            return None
        return refusal

    def charge(self, caller: Caller, tokens: int) -> None:
        """Tell the ledger, without making the answer wait for it."""
        if tokens <= 0 or caller.limits.generated_tokens_per_day is None:
            return
        asyncio.get_running_loop().create_task(self._charge(caller.name, tokens))

    async def _charge(self, name: str, tokens: int) -> None:
        try:
            await asyncio.wait_for(self.handle.charge.remote(name, tokens), timeout=LEDGER_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            self._warn(f"KeyLedger not reached ({exc!r}); {tokens} tokens of {name} not counted")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= LEDGER_WARNING_EVERY_S:  # once in a while, not once per request
            self._warned = now
            logger.warning(message)


class KeyAccess:
    """ASGI middleware: the caller's key (401 unless known), its limits (429), and its per-key request metrics."""

    def __init__(self, app: ASGIApp, keys: KeyTable, ledger: KeyLedgerClient, metrics: KeyMetrics) -> None:
        self.app = app
        self.keys = keys
        self.ledger = ledger
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_open(scope["path"]) or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        caller = self._caller(scope) if self.keys.enabled else ANONYMOUS
        route = self.metrics.route_of(scope["path"])
        if caller is None:
            # The same answer for a missing, malformed or wrong key: nothing to learn from it.
            await send_json(send, 401, {"detail": "missing or invalid API key"}, {"WWW-Authenticate": "Bearer"})
            return
        scope.setdefault("state", {})["caller"] = caller
        generates = scope.get("method") == "POST" and route in GENERATING_ROUTES
        refusal = await self.ledger.admit(caller, generates)
        if refusal is not None:
            self.metrics.request(caller.name, route, 429)
            await send_json(
                send,
                429,
                {"detail": refusal.detail, "limit": refusal.limit, "allowed": refusal.allowed},
                {"Retry-After": str(refusal.retry_after_s)},
            )
            return
        status = 500  # if the app raises before answering, Serve answers 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.request(caller.name, route, status)

    @staticmethod
    def _is_open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    def _caller(self, scope: Scope) -> Caller | None:
        header = b""
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        # Looked up by the token's SHA-256: the time taken does not depend on how much of a guess is right.
        return self.keys.caller(token)
