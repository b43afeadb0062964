"""Generator: every route that generates text: /augment, /augment_batch and /generate."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.deployments.text_deployment import TextDeployment
from serve_app.engine.requests import SamplingParams
from serve_app.text.label_keeping import Checks


@serve.deployment(name="Generator")
class Generator(TextDeployment):
    async def augment(
        self,
        texts: list[str],
        params: SamplingParams | list[SamplingParams],
        checks: Checks | None = None,
        background: bool = False,
    ) -> list[dict[str, Any]]:
        """Per text, in input order: its paraphrases (TextTasks.augment); `background` as Classifier.classify."""
        return await self.text_tasks.augment(self.model_calls(background), texts, params, checks)

    async def generate(
        self, task: str | None, prompt: str | None, values: dict[str, str], params: SamplingParams
    ) -> dict[str, Any]:
        """A model-card task by name (its template filled from `values`), or a raw prompt."""
        return await self.text_tasks.generate(self, task, prompt, values, params)
