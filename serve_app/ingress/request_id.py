"""The request id: one per HTTP request, in the response's X-Request-ID, every error body and every log line.

Ray Serve's proxy already takes the client's `X-Request-ID` (or makes one), returns it in the response and
carries it, as the Serve request context, through every deployment call: Serve's log lines of the Ingress,
Classifier/Generator and ModelReplica name it, and the ModelReplica hands it to the scheduler thread
(scheduling/scheduler.py), whose own lines name it too. This middleware adds the project's rules:

- an id is used only when it is sane: 1-128 visible ASCII characters. Another is replaced by a fresh one for the
  logs, the deployments and the error body, and sent back in X-Request-ID (Serve's proxy also echoes the client's
  own header as it came, a second X-Request-ID value the project cannot remove; README, "Request ids");
- every JSON error body (status >= 400) carries `"request_id"`.
"""

from __future__ import annotations

import json
import re
import uuid

from ray.serve.context import _set_request_context
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
SANE_ID = re.compile(r"[\x21-\x7e]{1,128}")


def sane_request_id(value: str | None) -> str | None:
    """`value` if it may serve as a request id, else None."""
    return value if value is not None and SANE_ID.fullmatch(value) else None


def request_id_of(scope: Scope) -> str:
    return str(scope.get("state", {}).get("request_id", ""))


class RequestIds:
    """ASGI middleware, outermost: settles the request id and puts it into error bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(HEADER)
        request_id = sane_request_id(given.decode("latin-1") if given is not None else None)
        replaced = request_id is None
        if request_id is None:
            request_id = uuid.uuid4().hex
            # The deployment calls made from here on carry this id (Serve copies its context into each call).
            _set_request_context(request_id=request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        held: Message | None = None  # an error's start message, sent with its body once the id is in it

        async def send_with_id(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if replaced:
                    message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
                if message["status"] >= 400 and _is_json(message) and held is None:
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                body = message.get("body", b"")
                if message.get("more_body"):  # an error body sent in parts: not ours, left as it is
                    start, held = held, None
                    await send(start)
                    await send(message)
                    return
                start, held = held, None
                await _send_error_with_id(send, start, body, request_id)
                return
            await send(message)

        await self.app(scope, receive, send_with_id)


def _is_json(start: Message) -> bool:
    for name, value in start.get("headers", []):
        if name.lower() == b"content-type":
            return bytes(value).startswith(b"application/json")
    return False


async def _send_error_with_id(send: Send, start: Message, body: bytes, request_id: str) -> None:
    try:
        content = json.loads(body)
    except ValueError:
        content = None
    if isinstance(content, dict):
        content["request_id"] = request_id
        body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    headers = [(name, value) for name, value in start.get("headers", []) if name.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})
