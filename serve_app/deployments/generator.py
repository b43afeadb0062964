"""Generator: every route that generates text: /augment, /augment_batch and /generate."""

from __future__ import annotations

from ray import serve

from serve_app import tracing
from serve_app.deployments.text_deployment import Metered, TextDeployment
from serve_app.engine.requests import SamplingParams
from serve_app.text.label_keeping import Checks
from serve_app.text.model_calls import CountedCalls


@serve.deployment(name="Generator")
class Generator(TextDeployment):
    async def augment(
        self,
        texts: list[str],
        params: SamplingParams | list[SamplingParams],
        checks: Checks | None = None,
        background: bool = False,
        trace: tracing.Carrier | None = None,
    ) -> Metered:
        """Per text, in input order: its paraphrases (TextTasks.augment); `background`, `trace` as
        Classifier.classify."""
        calls = CountedCalls(self.model_calls(background))
        with tracing.continued(trace), tracing.span("Generator.augment", texts=len(texts)):
            answers = await self.text_tasks.augment(calls, texts, params, checks)
        return Metered(answers, calls.generated_tokens)

    async def generate(
        self,
        task: str | None,
        prompt: str | None,
        values: dict[str, str],
        params: SamplingParams,
        trace: tracing.Carrier | None = None,
    ) -> Metered:
        """A model-card task by name (its template filled from `values`), or a raw prompt."""
        calls = CountedCalls(self)
        with tracing.continued(trace), tracing.span("Generator.generate", task=task or "prompt"):
            answer = await self.text_tasks.generate(calls, task, prompt, values, params)
        return Metered(answer, calls.generated_tokens)
