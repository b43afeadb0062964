"""What Classifier and Augmenter share: settings, the tokenizer, and the ModelReplica handle."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from ray.serve.handle import DeploymentHandle

from serve_app.engine.loading import load_tokenizer
from serve_app.engine.spec import resolve_spec
from serve_app.tokenization import PromptEncoder
from serve_app.deployments.cpu_priority import yield_cpu_to_the_model
from serve_app.settings import AppSettings

T = TypeVar("T")


class TextDeployment:
    """CPU-side text work: holds a tokenizer (no weights) and a handle to the model replicas."""

    def __init__(self, settings: dict[str, Any], replica: DeploymentHandle) -> None:
        self.settings = AppSettings.model_validate(settings)
        yield_cpu_to_the_model(self.settings.light_deployment_nice)
        self.encoder = PromptEncoder(load_tokenizer(resolve_spec(self.settings.model).path), self.settings.max_input_tokens)
        self.replica = replica


async def gather_or_cancel(responses: Iterable[Awaitable[T]]) -> list[T]:
    """Every response, in order; on the first failure the others are cancelled (their rows leave the
    model's batch at its next step instead of computing answers nobody will read) and the failure is raised."""
    tasks = [asyncio.ensure_future(response) for response in responses]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
