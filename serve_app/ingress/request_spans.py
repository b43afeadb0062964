"""ASGI middleware: the Ingress's span of each request, continuing the client's W3C `traceparent` (installed only
when tracing is on: serve_app/tracing.py)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app import tracing
from serve_app.ingress.request_id import request_id_of


class RequestSpans:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers") or []}
        name = f"Ingress {scope.get('method', '')} {scope['path']}"
        with tracing.continued(headers), tracing.span(name, request_id=request_id_of(scope)) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", int(message["status"]))
                await send(message)

            await self.app(scope, receive, send_with_status)
