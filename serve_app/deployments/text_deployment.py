"""What Classifier and Generator share: settings, the text tasks over the tokenizer, and the ModelReplica handle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app import tracing
from serve_app.deployments.cpu_priority import yield_cpu_to_the_model
from serve_app.deployments.failures import is_replica_loss
from serve_app.deployments.handle_calls import await_or_cancel, gather_or_cancel
from serve_app.deployments.replica_logging import log_refusals_in_one_line
from serve_app.engine.requests import GenerationRequest, ScoringRequest, ScoringResult
from serve_app.engine.spec import resolve_spec
from serve_app.engine.tokenizer import load_tokenizer
from serve_app.settings import AppSettings
from serve_app.text.model_calls import ModelCalls
from serve_app.text.tasks import TextTasks
from serve_app.text.tokenization import PromptEncoder

logger = logging.getLogger("ray.serve")
MODEL_CALL_ATTEMPTS = 3


@dataclass(frozen=True)
class Metered:
    """A route's answer, the tokens generated for it (the Ingress charges them to the caller's key) and how many of
    its answers came from the classification cache (the Ingress says so in X-MT5-Cached)."""

    answer: Any
    generated_tokens: int = 0
    cached: int | None = None  # None: the cache was not asked (generation, `mode: generate`, or the cache off)


class TextDeployment:
    """CPU-side text work: holds a tokenizer (no weights) and a handle to the model replicas.

    It is the text tasks' ModelCalls: each request goes to a ModelReplica on its own call, and
    joins that replica's batch alongside everyone else's work."""

    def __init__(self, settings: dict[str, Any], replica: DeploymentHandle) -> None:
        self.settings = AppSettings.model_validate(settings)
        tracing.start_tracing(self.settings.otlp_endpoint, type(self).__name__)
        yield_cpu_to_the_model(self.settings.light_deployment_nice)
        log_refusals_in_one_line()  # a full model queue is answered 503, not a failure to trace
        self.checkpoint = resolve_spec(self.settings.model, files="tokenizer").path  # where the model resolved to
        tokenizer = load_tokenizer(self.checkpoint)
        self.text_tasks = TextTasks(
            PromptEncoder(tokenizer, self.settings.max_input_tokens),
            self.settings.prompt_templates(),
            self.settings.scoring,
        )
        self.replica = replica

    async def call_model(self, method: str, request: Any, background: bool = False) -> Any:
        """`self.replica.<method>(request)`, sent again when the replica that took it died meanwhile.

        A router learns of a lost replica a moment after the controller does, so a call can still land
        on one that is gone; the work is the same and nobody saw an answer, so another replica takes
        it (Serve routes only to live ones). The ingress's timeout bounds the retries."""
        for attempt in range(1, MODEL_CALL_ATTEMPTS + 1):
            try:
                call = getattr(self.replica, method).remote(request, background, tracing.carrier())
                return await await_or_cancel(call)
            except Exception as exc:
                if attempt == MODEL_CALL_ATTEMPTS or not is_replica_loss(exc):
                    raise
                logger.warning(
                    "ModelReplica lost during %s (%s); sending it again (attempt %d of %d)",
                    method,
                    type(exc).__name__,
                    attempt + 1,
                    MODEL_CALL_ATTEMPTS,
                )
                await asyncio.sleep(0.5 * attempt)
        raise AssertionError("unreachable")

    async def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[int]]]:
        return await gather_or_cancel(self.call_model("generate", request) for request in requests)

    async def score_many(self, requests: Sequence[ScoringRequest]) -> list[ScoringResult]:
        return await gather_or_cancel(self.call_model("score", request) for request in requests)

    def model_calls(self, background: bool = False) -> ModelCalls:
        """The text tasks' ModelCalls: interactive (this deployment itself), or background work (dataset jobs,
        `mt5-bulk --url`), which every replica's scheduler serves after the interactive requests."""
        return BackgroundCalls(self) if background else self


class BackgroundCalls:
    """A text deployment's model calls sent as background work."""

    def __init__(self, deployment: TextDeployment) -> None:
        self.deployment = deployment

    async def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[int]]]:
        return await gather_or_cancel(self.deployment.call_model("generate", r, background=True) for r in requests)

    async def score_many(self, requests: Sequence[ScoringRequest]) -> list[ScoringResult]:
        return await gather_or_cancel(self.deployment.call_model("score", r, background=True) for r in requests)
