"""Ingress: the HTTP contract (docs/http-api.md) on FastAPI, the UI at /, every failure mapped by errors.py.

Each replica builds its own FastAPI app after its constructor (`__serve_build_asgi_app__`),
so the middleware the settings ask for (API key, CORS) belongs to that replica's app.
"""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from serve_app import tracing
from serve_app.access.keys import KeyTable
from serve_app.deployments.cpu_priority import yield_cpu_to_the_model
from serve_app.deployments.failures import is_replica_loss
from serve_app.deployments.handle_calls import await_or_cancel
from serve_app.deployments.key_metrics import KeyMetrics
from serve_app.deployments.text_deployment import Metered
from serve_app.ingress import openapi, schemas
from serve_app.ingress.auth import KeyAccess, KeyLedgerClient, caller_of_scope, load_api_key
from serve_app.ingress.body_limit import BodyLimits
from serve_app.ingress.errors import (
    RouteFailure,
    logger,
    route_failure_handler,
    validation_error_handler,
)
from serve_app.ingress.jobs_routes import JobsRoutes
from serve_app.ingress.model_availability import ModelAvailability, ModelOutage
from serve_app.ingress.request_id import RequestIds
from serve_app.ingress.request_spans import RequestSpans
from serve_app.jobs.store import JobStore
from serve_app.settings import AppSettings
from serve_app.text.errors import TextInputError

UI_DIR = Path(__file__).resolve().parents[2] / "ui"

MODEL_OUTAGE_RETRY_AFTER_S = 5  # a replacement ModelReplica takes seconds to load, not one
HEALTH_DESCRIBE_TIMEOUT_S = 3  # the model answers describe() in milliseconds when a replica runs
LIGHT_RETRY_WAIT_S = 5.0  # a call whose Classifier/Generator replica died is sent once more, waiting at most this
CACHED_HEADER = "X-MT5-Cached"  # /classify, /classify_batch in score mode: answers the classification cache gave


def _unavailable(model_info: dict[str, Any], detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"status": "unavailable", "detail": detail, **model_info},
        headers={"Retry-After": str(MODEL_OUTAGE_RETRY_AFTER_S)},
    )


@serve.deployment(name="Ingress")
@serve.ingress()  # the app comes from __serve_build_asgi_app__, one per replica
class Ingress:
    # async: the model watcher starts on the replica's event loop before the first request
    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self,
        settings: dict[str, Any],
        classifier: DeploymentHandle[Any],
        generator: DeploymentHandle[Any],
        replica: DeploymentHandle[Any],
        job_runner: DeploymentHandle[Any],
        key_ledger: DeploymentHandle[Any],
    ) -> None:
        self.settings = AppSettings.model_validate(settings)
        tracing.start_tracing(self.settings.otlp_endpoint, "Ingress")
        yield_cpu_to_the_model(self.settings.light_deployment_nice)
        self.templates = self.settings.prompt_templates()
        self.classifier = classifier
        self.generator = generator
        self.replica = replica
        self.jobs = JobsRoutes(
            JobStore(self.settings.jobs.store), job_runner, self.settings.jobs, self.settings.scoring
        )
        # Read here, not per app: a bad keys file fails the replica's start with the file's own message.
        self.keys = KeyTable(
            load_api_key(self.settings.api_key_env, self.settings.api_key_file), self.settings.api_keys_file
        )
        self.ledger = KeyLedgerClient(key_ledger)
        self.key_metrics = KeyMetrics()
        self._model_info: dict[str, Any] | None = None
        self.model = ModelAvailability(serve.get_replica_context().app_name)
        self.model.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """This replica's app: the routes below, the UI, and the middleware its settings ask for."""
        api = FastAPI(
            title="mT5 zero-shot classification and augmentation",
            description=(
                "全任务零样本学习-mT5分类增强版-中文-base on Ray Serve: "
                "zero-shot classification, augmentation and the model card's tasks."
            ),
            version="0.1.0",
        )
        # Starlette runs the last-added middleware first: request id, CORS, the key and its limits, the body's limits.
        api.add_middleware(
            BodyLimits,
            path_limits={"/jobs": self.settings.jobs.max_upload_bytes},
            timeout_s=self.settings.body_timeout_s,
            path_timeouts={"/jobs": (self.settings.jobs.upload_timeout_s, "jobs.upload_timeout_s")},
        )
        api.add_middleware(KeyAccess, keys=self.keys, ledger=self.ledger, metrics=self.key_metrics)
        if self.settings.cors_allow_origins:
            api.add_middleware(
                CORSMiddleware,
                allow_origins=self.settings.cors_allow_origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "X-MT5-Priority", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After"],
            )
        if tracing.enabled():
            api.add_middleware(RequestSpans)  # inside RequestIds: the span knows the request id
        api.add_middleware(RequestIds)
        logger.info(
            "Ingress: API key auth %s, CORS origins %s",
            "on" if self.keys.enabled else "off",
            self.settings.cors_allow_origins or "off",
        )
        api.add_exception_handler(RequestValidationError, validation_error_handler)
        api.add_exception_handler(RouteFailure, route_failure_handler)
        if UI_DIR.is_dir():
            api.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")

        post: dict[str, Any] = {"methods": ["POST"], "responses": openapi.error_responses(body=True)}
        # Fields a request did not ask for (keep_label's) are left out, not sent as null.
        api.add_api_route(
            "/augment", self.augment, response_model=schemas.AugmentResponse, response_model_exclude_none=True, **post
        )
        api.add_api_route(
            "/augment_batch",
            self.augment_batch,
            response_model=schemas.AugmentBatchResponse,
            response_model_exclude_none=True,
            **post,
        )
        api.add_api_route(
            "/classify",
            self.classify,
            response_model=schemas.ClassifyScoreResponse | schemas.ClassifyGenerateResponse,
            **post,
        )
        api.add_api_route("/classify_batch", self.classify_batch, response_model=schemas.ClassifyBatchResponse, **post)
        api.add_api_route("/generate", self.generate, response_model=schemas.GenerateResponse, **post)
        api.add_api_route(
            "/tasks",
            self.tasks,
            methods=["GET"],
            response_model=schemas.TasksResponse,
            responses=openapi.error_responses(body=False),
        )
        api.add_api_route(
            "/healthz",
            self.healthz,
            methods=["GET"],
            response_model=schemas.HealthResponse,
            responses=openapi.health_responses(),
        )
        api.include_router(self.jobs.router(openapi.error_responses(body=True)))
        api.openapi = lambda: openapi.document(api, self.templates, auth=self.keys.enabled)  # type: ignore[method-assign]
        api.add_api_route("/", self.index, methods=["GET"], include_in_schema=False)
        return api

    async def _call(self, call: Callable[[], DeploymentResponse[Any] | DeploymentResponseGenerator[Any]]) -> Any:
        """Make a deployment call and await it, or raise RouteFailure (errors.failure_response decides the
        answer). Nothing is sent while no model replica runs, and a call still waiting when this replica
        sees that none runs is given up."""
        if not await self.model.available_now():
            raise RouteFailure(
                status=503, detail=self.model.describe_outage(), retry_after_s=MODEL_OUTAGE_RETRY_AFTER_S
            )
        try:
            # On timeout the call is cancelled, not only abandoned: its rows leave the model's batch.
            return await asyncio.wait_for(self._sent_again_if_lost(call), timeout=self.settings.request_timeout_s)
        except ModelOutage as outage:
            raise RouteFailure(status=503, detail=str(outage), retry_after_s=MODEL_OUTAGE_RETRY_AFTER_S) from None
        except asyncio.TimeoutError:
            raise RouteFailure(status=504, detail=f"no answer within {self.settings.request_timeout_s} s") from None
        except Exception as exc:  # Ray wraps deployment errors; failure_response looks inside
            raise RouteFailure(exc) from exc

    def _metered(
        self, request: Request, metered: Metered, labels_scored: int = 0, response: Response | None = None
    ) -> Any:
        """The answer of a deployment's Metered result; its tokens and labels charged to the caller's key; how many
        answers the classification cache gave in `response`'s X-MT5-Cached header."""
        if response is not None and metered.cached is not None:
            response.headers[CACHED_HEADER] = str(metered.cached)
        caller = caller_of_scope(request.scope)
        self.key_metrics.generated(caller.name, metered.generated_tokens)
        self.key_metrics.scored(caller.name, labels_scored)
        self.ledger.charge(caller, metered.generated_tokens)
        return metered.answer

    async def _sent_again_if_lost(
        self, call: Callable[[], DeploymentResponse[Any] | DeploymentResponseGenerator[Any]]
    ) -> Any:
        """The call's answer; sent once more when the Classifier or Generator replica that took it died before
        answering (a lost node). Safe for every route: nobody saw an answer, scoring and seeded sampling give the
        same one again, and an unseeded request had none to keep. Serve routes the second call to a live replica;
        where none is left (a deployment of one, being replaced) the second call waits at most LIGHT_RETRY_WAIT_S
        and the client gets the first failure's 503 with Retry-After, as before."""
        try:
            return await self.model.unless_outage(await_or_cancel(call()))
        except ModelOutage:
            raise
        except Exception as exc:
            if not is_replica_loss(exc):
                raise
            lost = exc
        logger.warning("a replica was lost with this request in flight (%s); sending it again", type(lost).__name__)
        try:
            return await asyncio.wait_for(self.model.unless_outage(await_or_cancel(call())), timeout=LIGHT_RETRY_WAIT_S)
        except asyncio.TimeoutError:
            raise lost from None

    async def augment(self, request: Request, body: schemas.AugmentRequest) -> Any:
        metered = await self._call(
            lambda: self.generator.augment.remote(
                [body.text], body.sampling_params(), body.checks(), trace=tracing.carrier()
            )
        )
        return self._metered(request, metered)[0]

    async def augment_batch(
        self, request: Request, body: schemas.AugmentBatchRequest, priority: schemas.PriorityHeader = "interactive"
    ) -> Any:
        background = priority == "background"
        metered = await self._call(
            lambda: self.generator.augment.remote(
                body.texts, body.sampling_params_per_text(), body.checks(), background, trace=tracing.carrier()
            )
        )
        return schemas.batch_of_augment_answers(self._metered(request, metered))

    async def classify(self, request: Request, response: Response, body: schemas.ClassifyRequest) -> Any:
        metered = await self._call(
            lambda: self.classifier.classify.remote(
                [body.text], body.labels, body.mode, body.scoring, trace=tracing.carrier()
            )
        )
        scored = len(body.labels) if body.mode == "score" else 0
        return self._metered(request, metered, labels_scored=scored, response=response)[0]

    async def classify_batch(
        self,
        request: Request,
        response: Response,
        body: schemas.ClassifyBatchRequest,
        priority: schemas.PriorityHeader = "interactive",
    ) -> Any:
        background = priority == "background"
        metered = await self._call(
            lambda: self.classifier.classify.remote(
                body.texts, body.labels, body.mode, body.scoring, background, trace=tracing.carrier()
            )
        )
        scored = len(body.texts) * len(body.labels) if body.mode == "score" else 0
        return {"results": self._metered(request, metered, labels_scored=scored, response=response)}

    async def generate(self, request: Request, body: schemas.GenerateRequest) -> Any:
        if body.task is not None:
            # The same rules the Generator applies, checked before the hop too, so a client's typo is a
            # plain 422 here and not an error logged by a deployment.
            try:
                self.templates.task_values(body.task, body.slot_values())
            except TextInputError as error:
                raise RouteFailure(error) from None
        metered = await self._call(
            lambda: self.generator.generate.remote(
                body.task, body.prompt, body.slot_values(), body.sampling_params(), trace=tracing.carrier()
            )
        )
        return self._metered(request, metered)

    async def tasks(self) -> Any:
        return {"tasks": self.templates.task_list()}

    async def healthz(self) -> Any:
        available = await self.model.available_now()
        if available and self._model_info is None:
            try:  # the first look at the model; a replica lost meanwhile must not hang the health check
                self._model_info = await asyncio.wait_for(
                    await_or_cancel(self.replica.describe.remote()), timeout=HEALTH_DESCRIBE_TIMEOUT_S
                )
            except Exception as exc:  # noqa: BLE001
                logger.warning("healthz: the model did not describe itself: %r", exc)
                return _unavailable(
                    {},
                    "the model is unavailable: no ModelReplica answered the health check within "
                    f"{HEALTH_DESCRIBE_TIMEOUT_S} s (starting or being replaced); retry shortly",
                )
        if not available or self._model_info is None:
            return _unavailable(self._model_info or {}, self.model.describe_outage())
        return {"status": "ok", **self._model_info}

    async def index(self) -> Any:
        return FileResponse(UI_DIR / "index.html")
