"""The body's limits (serve_app/ingress/body_limit.py) on the ASGI interface itself: size and time, in milliseconds.

The service-level checks (a real proxy, real sockets, a storm of slow clients) are in tests/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from serve_app.ingress.body_limit import BodyLimits

pytestmark = pytest.mark.unit


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body, answers its length, then waits for the client to leave."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def call(
    app: Any, chunks: list[tuple[float, bytes]], path: str = "/classify", tail_wait_s: float = 0.0
) -> list[Message]:
    """`app` called with a body sent as (delay before it, bytes) chunks; the messages it sent back."""
    sent: list[Message] = []
    queue = list(chunks)

    async def receive() -> Message:
        if not queue:
            await asyncio.sleep(tail_wait_s)  # after the body: a disconnect, when the client leaves
            return {"type": "http.disconnect"}
        delay, body = queue.pop(0)
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": [], "method": "POST"}
    asyncio.run(app(scope, receive, send))
    return sent


def answer(sent: list[Message]) -> tuple[int, dict[str, Any] | str, dict[bytes, bytes]]:
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    try:
        content: dict[str, Any] | str = json.loads(body)
    except ValueError:
        content = body.decode()
    return start["status"], content, dict(start["headers"])


def test_a_body_trickling_past_its_deadline_is_408_at_the_deadline_and_closes_the_connection() -> None:
    app = BodyLimits(echo_length, timeout_s=0.3)
    started = time.monotonic()
    status, content, headers = answer(call(app, [(0.1, b"a")] * 20))  # a byte every 0.1 s: 2 s for the body
    took = time.monotonic() - started
    assert status == 408 and headers[b"connection"] == b"close"
    assert content == {"detail": "request body not received within 0.3 s of the request (body_timeout_s)"}
    assert 0.3 <= took < 0.6, took  # at the deadline, not at the end of the body


def test_a_body_in_time_passes_and_waiting_past_the_body_is_not_limited() -> None:
    app = BodyLimits(echo_length, timeout_s=0.3)
    # A body in 0.2 s, then the answer; the app's later receive() (waiting for a disconnect) is not cut off.
    assert answer(call(app, [(0.1, b"ab"), (0.1, b"cd")], tail_wait_s=0.5))[:2] == (200, 4)

    async def waits_for_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
        await echo_length(scope, receive, send)
        assert (await receive())["type"] == "http.disconnect"  # a streaming answer watching its client

    started = time.monotonic()
    assert answer(call(BodyLimits(waits_for_disconnect, timeout_s=0.3), [(0, b"x")], tail_wait_s=0.5))[0] == 200
    assert time.monotonic() - started >= 0.5


def test_a_path_keeps_its_own_deadline_and_names_its_setting() -> None:
    app = BodyLimits(
        echo_length, timeout_s=0.2, path_timeouts={"/jobs": (1.0, "jobs.upload_timeout_s")}, path_limits={"/jobs": 10}
    )
    assert answer(call(app, [(0.15, b"a")] * 3, path="/jobs"))[:2] == (200, 3)  # 0.45 s: past 0.2, within 1.0
    status, content, _ = answer(call(app, [(0.4, b"a")] * 3, path="/jobs"))
    assert status == 408 and content == {
        "detail": "request body not received within 1 s of the request (jobs.upload_timeout_s)"
    }
    assert answer(call(app, [(0, b"x" * 11)], path="/jobs"))[:2] == (413, {"detail": "request body exceeds 10 bytes"})
