"""Map validation errors, engine errors and overload onto HTTP answers: 422 / 413 / 503 / 504, never 500 for client input."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serve_app.engine.errors import EngineInputError
from serve_app.scheduling.errors import AdmissionRefused

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = 1


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """pydantic's error list as {field, msg, type}; `field` is the dotted path inside the body."""
    out = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        out.append({"field": ".".join(loc) or "body", "msg": str(error.get("msg", "invalid")), "type": str(error.get("type", "value_error"))})
    return out


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": field_errors(list(exc.errors()))})


def engine_error(exc: BaseException) -> EngineInputError | None:
    """The EngineInputError behind `exc`, also when Ray wrapped it on its way through a handle."""
    return next((e for e in _chain(exc) if isinstance(e, EngineInputError)), None)


def engine_error_response(exc: EngineInputError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [{"field": exc.field, "msg": exc.rule, "type": "value_error"}]})


def overloaded_response(reason: str, retry_after_s: int = RETRY_AFTER_S) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": reason}, headers={"Retry-After": str(retry_after_s)})


def admission_refusal(exc: BaseException) -> AdmissionRefused | None:
    """The scheduler's refusal behind `exc`: the request could not have started before its deadline."""
    return next((e for e in _chain(exc) if isinstance(e, AdmissionRefused)), None)


def _chain(exc: BaseException | None):
    seen = 0
    while exc is not None and seen < 8:
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1


def is_overload(exc: BaseException) -> bool:
    """The service is at capacity (a deployment's max_queued_requests was reached)."""
    from ray.serve.exceptions import BackPressureError

    return any(isinstance(e, BackPressureError) for e in _chain(exc))


def is_refusal(exc: BaseException) -> bool:
    """Answered 422 or 503 + Retry-After by design (bad input, a full queue, a late start): not a fault of ours."""
    return engine_error(exc) is not None or is_overload(exc) or admission_refusal(exc) is not None


def is_replica_loss(exc: BaseException) -> bool:
    """A replica died or became unreachable mid-request: Serve replaces it, the client should retry."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    lost = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError, ReplicaUnavailableError)
    return any(isinstance(e, lost) for e in _chain(exc))


class RouteFailure(Exception):
    """A route could not answer: the one way every failure leaves a route (mapped by `failure_response`).

    `cause` is what went wrong (a deployment's error as Ray delivered it, a timeout, an input error);
    `status`/`detail`/`retry_after_s` force an answer where the route already knows it."""

    def __init__(self, cause: BaseException | None = None, *, status: int | None = None, detail: str = "", retry_after_s: int | None = None) -> None:
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
    if (error := engine_error(exc)) is not None:
        return engine_error_response(error)
    if (refusal := admission_refusal(exc)) is not None:
        return overloaded_response(str(refusal), refusal.retry_after_s)
    if is_overload(exc):
        return overloaded_response("the service is at capacity; retry shortly")
    if is_replica_loss(exc):
        return overloaded_response("a model replica was lost and is being replaced; retry shortly")
    logger.error("request failed", exc_info=(type(exc), exc, exc.__traceback__))
    return JSONResponse(status_code=500, content={"detail": "internal error"})


async def route_failure_handler(request: Request, failure: RouteFailure) -> JSONResponse:
    return failure_response(failure)
