"""Every failure's HTTP answer: 422 for a broken rule, 503 (+ Retry-After) for overload or no model, 504, never 500 for
client input."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serve_app.deployments.failures import (
    InputError,
    admission_refusal,
    input_error,
    is_overload,
    is_replica_loss,
)

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = 1


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """pydantic's error list as {field, msg, type}; `field` is the dotted path inside the body."""
    out = []
    for error in errors:
        kind = str(error.get("type", "value_error"))
        # A JSON syntax error's location is a character offset, not a field: the body is what is wrong.
        loc = [] if kind == "json_invalid" else [str(part) for part in error.get("loc", ()) if part != "body"]
        out.append({"field": ".".join(loc) or "body", "msg": str(error.get("msg", "invalid")), "type": kind})
    return out


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Registered for RequestValidationError (Starlette types every handler as taking an Exception)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": field_errors(list(exc.errors()))})


def input_error_response(exc: InputError) -> JSONResponse:
    return JSONResponse(
        status_code=422, content={"detail": [{"field": exc.field, "msg": exc.rule, "type": "value_error"}]}
    )


def overloaded_response(reason: str, retry_after_s: int = RETRY_AFTER_S) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": reason}, headers={"Retry-After": str(retry_after_s)})


class RouteFailure(Exception):
    """A route could not answer: the one way every failure leaves a route (mapped by `failure_response`).

    `cause` is what went wrong (a deployment's error as Ray delivered it, a timeout, an input error);
    `status`/`detail`/`retry_after_s` force an answer where the route already knows it."""

    def __init__(
        self,
        cause: BaseException | None = None,
        *,
        status: int | None = None,
        detail: str = "",
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(detail or repr(cause))
        self.cause = cause
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s


def failure_response(failure: RouteFailure) -> JSONResponse:
    """Every failure's HTTP answer: input 422, overload / no model / lost replica 503, timeout 504, else 500."""
    if failure.status is not None:
        if failure.status == 503:
            return overloaded_response(failure.detail, failure.retry_after_s or RETRY_AFTER_S)
        return JSONResponse(status_code=failure.status, content={"detail": failure.detail})
    exc = failure.cause
    if exc is None:
        return JSONResponse(status_code=500, content={"detail": "internal error"})
    if (error := input_error(exc)) is not None:
        return input_error_response(error)
    if (refusal := admission_refusal(exc)) is not None:
        return overloaded_response(str(refusal), refusal.retry_after_s)
    if is_overload(exc):
        return overloaded_response("the service is at capacity; retry shortly")
    if is_replica_loss(exc):
        return overloaded_response("a model replica was lost and is being replaced; retry shortly")
    logger.error("request failed", exc_info=(type(exc), exc, exc.__traceback__))
    return JSONResponse(status_code=500, content={"detail": "internal error"})


async def route_failure_handler(request: Request, failure: Exception) -> JSONResponse:
    """Registered for RouteFailure."""
    assert isinstance(failure, RouteFailure)
    return failure_response(failure)
