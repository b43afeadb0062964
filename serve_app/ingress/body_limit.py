"""ASGI middleware: the limits on a request's body, checked before anything parses it.

- size: a body over its limit is refused with 413;
- time: a body not received within its deadline (counted from the request's arrival at the Ingress) is refused
  with 408. Ray Serve's proxy hands the Ingress a request as soon as its headers are in and streams the body after
  it, so a client that sends its body a byte a second holds one of the Ingress's `max_ongoing_requests` slots for
  as long as it likes; 200 of them would leave a well-behaved client queueing behind them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1 << 20  # 1 MiB
BODY_TIMEOUT_S = 10.0  # a 1 MiB JSON body in 10 s needs 100 KiB/s: any client that means to send it


class BodyTooLarge(HTTPException):
    # An HTTPException, so a framework reading the body mid-stream answers 413 rather than 400.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds {max_bytes} bytes")


class BodyTooSlow(HTTPException):
    def __init__(self, timeout_s: float, setting: str) -> None:
        super().__init__(
            status_code=408, detail=f"request body not received within {timeout_s:g} s of the request ({setting})"
        )


class BodyLimits:
    """`max_bytes` and `timeout_s` for every body, except the paths in `path_limits` / `path_timeouts` (a dataset
    upload to /jobs, say; its deadline is named by `path_timeout_settings` in the 408's detail)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        path_limits: Mapping[str, int] | None = None,
        timeout_s: float = BODY_TIMEOUT_S,
        path_timeouts: Mapping[str, tuple[float, str]] | None = None,
    ) -> None:
        self.app = app
        self.default_bytes = max_bytes
        self.path_limits = dict(path_limits or {})
        self.default_timeout = (timeout_s, "body_timeout_s")
        self.path_timeouts = dict(path_timeouts or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        max_bytes = self.path_limits.get(path, self.default_bytes)
        timeout_s, setting = self.path_timeouts.get(path, self.default_timeout)
        await self._limited(scope, receive, send, max_bytes, timeout_s, setting)

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, max_bytes: int, timeout_s: float, setting: str
    ) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await _reject_too_large(send, max_bytes)
            return
        deadline = time.monotonic() + timeout_s
        received = 0
        body_done = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # past the body only a disconnect is left to wait for, as long as the answer takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise BodyTooSlow(timeout_s, setting) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True  # http.disconnect
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reject_too_large(send, max_bytes)
        except BodyTooSlow as refusal:
            if not started:
                await send_json(send, 408, {"detail": refusal.detail}, {"Connection": "close"})


async def _reject_too_large(send: Send, max_bytes: int) -> None:
    await send_json(send, 413, {"detail": f"request body exceeds {max_bytes} bytes"})


async def send_json(send: Send, status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """A whole JSON answer from an ASGI middleware (before any route runs)."""
    body = json.dumps(content, ensure_ascii=False).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
