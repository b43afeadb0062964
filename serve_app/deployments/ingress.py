"""Ingress: the HTTP contract (design.md) on FastAPI, the UI at /, errors mapped to 4xx/503."""


import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import schemas
from serve_app.body_limit import BodySizeLimit
from serve_app.engine.errors import EngineInputError
from serve_app.errors import (
    admission_refusal,
    engine_error,
    engine_error_response,
    is_overload,
    is_replica_loss,
    logger,
    overloaded_response,
    validation_error_handler,
)
from serve_app.deployments.cpu_priority import yield_cpu_to_the_model
from serve_app.deployments.model_availability import ModelAvailability
from serve_app.security import ApiKeyAuth, load_api_key
from serve_app.settings import AppSettings

UI_DIR = Path(__file__).resolve().parents[2] / "ui"
T = TypeVar("T")

api = FastAPI(
    title="mT5 zero-shot classification and augmentation",
    description="全任务零样本学习-mT5分类增强版-中文-base on Ray Serve: zero-shot classification, augmentation and the model card's tasks.",
    version="0.1.0",
)
api.add_middleware(BodySizeLimit)
api.add_exception_handler(RequestValidationError, validation_error_handler)

_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": schemas.ErrorResponse, "description": "A field breaks a rule; `detail` names it"},
    413: {"model": schemas.ErrorResponse, "description": "Body over 1 MiB"},
    503: {"model": schemas.ErrorResponse, "description": "Overloaded; retry after Retry-After seconds"},
}


MODEL_OUTAGE_RETRY_AFTER_S = 5  # a replacement ModelReplica takes seconds to load, not one
HEALTH_DESCRIBE_TIMEOUT_S = 3  # the model answers describe() in milliseconds when a replica runs


def _unavailable(model_info: dict[str, Any], detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"status": "unavailable", "detail": detail, **model_info},
        headers={"Retry-After": str(MODEL_OUTAGE_RETRY_AFTER_S)},
    )


def _close(awaitable: Awaitable[Any]) -> None:
    """Drop a call that will not be awaited: cancel a handle's response (the request is never sent)."""
    cancel = getattr(awaitable, "cancel", None)
    if callable(cancel):
        cancel()
    elif hasattr(awaitable, "close"):
        awaitable.close()


# Mounted before @serve.ingress copies the app's routes; a later mount would never be served.
if UI_DIR.is_dir():
    api.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    # async: the model watcher starts on the replica's event loop before the first request
    async def __init__(self, settings: dict[str, Any], classifier: DeploymentHandle, augmenter: DeploymentHandle, replica: DeploymentHandle) -> None:
        self.settings = AppSettings.model_validate(settings)
        yield_cpu_to_the_model(self.settings.light_deployment_nice)
        # Middleware is added before the first request builds the stack; settings decide which.
        api_key = load_api_key(self.settings.api_key_env, self.settings.api_key_file)
        if api_key is not None:
            api.add_middleware(ApiKeyAuth, api_key=api_key)
        if self.settings.cors_allow_origins:
            api.add_middleware(
                CORSMiddleware,
                allow_origins=self.settings.cors_allow_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            )
        logger.info("Ingress: API key auth %s, CORS origins %s", "on" if api_key else "off", self.settings.cors_allow_origins or "off")
        self.classifier = classifier
        self.augmenter = augmenter
        self.replica = replica
        self._model_info: dict[str, Any] | None = None
        self.model = ModelAvailability(serve.get_replica_context().app_name)
        self.model.start()

    async def _call(self, awaitable: Awaitable[T]) -> "T | JSONResponse":
        """Await a deployment; client mistakes become 422, overload or no model replica 503, a timeout 504."""
        self.model.start()
        if not self.model.available:
            _close(awaitable)
            return overloaded_response(self.model.describe_outage(), MODEL_OUTAGE_RETRY_AFTER_S)
        try:
            return await asyncio.wait_for(awaitable, timeout=self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            return JSONResponse(status_code=504, content={"detail": f"no answer within {self.settings.request_timeout_s} s"})
        except Exception as exc:  # Ray wraps deployment errors; look inside before giving up
            if (error := engine_error(exc)) is not None:
                return engine_error_response(error)
            if (refusal := admission_refusal(exc)) is not None:
                return overloaded_response(str(refusal), refusal.retry_after_s)
            if is_overload(exc):
                return overloaded_response("the service is at capacity; retry shortly")
            if is_replica_loss(exc):
                return overloaded_response("a model replica was lost and is being replaced; retry shortly")
            logger.exception("request failed")
            return JSONResponse(status_code=500, content={"detail": "internal error"})

    @api.post("/augment", response_model=schemas.AugmentResponse, responses=_ERRORS)
    async def augment(self, body: schemas.AugmentRequest) -> Any:
        answer = await self._call(self.augmenter.augment.remote([body.text], body.sampling_params()))
        return answer if isinstance(answer, JSONResponse) else answer[0]

    @api.post("/augment_batch", response_model=schemas.AugmentBatchResponse, responses=_ERRORS)
    async def augment_batch(self, body: schemas.AugmentBatchRequest) -> Any:
        answer = await self._call(self.augmenter.augment.remote(body.texts, body.sampling_params_per_text()))
        if isinstance(answer, JSONResponse):
            return answer
        return {"augmented_texts": [item["augmented_texts"] for item in answer], "truncated": [item["truncated"] for item in answer]}

    @api.post("/classify", response_model=schemas.ClassifyScoreResponse | schemas.ClassifyGenerateResponse, responses=_ERRORS)
    async def classify(self, body: schemas.ClassifyRequest) -> Any:
        answer = await self._call(self.classifier.classify.remote([body.text], body.labels, body.mode, body.scoring))
        return answer if isinstance(answer, JSONResponse) else answer[0]

    @api.post("/classify_batch", response_model=schemas.ClassifyBatchResponse, responses=_ERRORS)
    async def classify_batch(self, body: schemas.ClassifyBatchRequest) -> Any:
        answer = await self._call(self.classifier.classify.remote(body.texts, body.labels, body.mode, body.scoring))
        return answer if isinstance(answer, JSONResponse) else {"results": answer}

    @api.post("/generate", response_model=schemas.GenerateResponse, responses=_ERRORS)
    async def generate(self, body: schemas.GenerateRequest) -> Any:
        if body.task is not None:
            # Checked here too, so a client's typo is a plain 422 and not an error logged by a deployment.
            template = self.settings.task_template(body.task)
            if template is None:
                known = ", ".join(sorted(self.settings.templates.tasks))
                return engine_error_response(EngineInputError("task", f"unknown task {body.task!r}; known tasks: {known}"))
            values = body.slot_values()
            for name in template.fields:
                if not values.get(name, "").strip():
                    return engine_error_response(EngineInputError(name, f"is required by task {body.task!r} and must be a non-empty string"))
        return await self._call(self.augmenter.generate.remote(body.task, body.prompt, body.slot_values(), body.sampling_params()))

    @api.get("/tasks", response_model=schemas.TasksResponse)
    async def tasks(self) -> Any:
        return {"tasks": await self.augmenter.tasks.remote()}

    @api.get("/healthz", response_model=schemas.HealthResponse, responses={503: {"model": schemas.HealthUnavailableResponse, "description": "No model replica is running"}})
    async def healthz(self) -> Any:
        self.model.start()
        if self.model.available and self._model_info is None:
            try:  # the first look at the model; a replica lost meanwhile must not hang the health check
                self._model_info = await asyncio.wait_for(self.replica.describe.remote(), timeout=HEALTH_DESCRIBE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001
                logger.warning("healthz: the model did not describe itself: %r", exc)
                return _unavailable({}, "the model did not answer the health check; it may be starting")
        if not self.model.available:
            return _unavailable(self._model_info or {}, self.model.describe_outage())
        return {"status": "ok", **self._model_info}

    @api.get("/", include_in_schema=False)
    async def index(self) -> Any:
        return FileResponse(UI_DIR / "index.html")

