"""Augmenter: paraphrase prompts and the model card's other generation tasks."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app import augmentation, label_keeping
from serve_app.deployments.text_deployment import TextDeployment
from serve_app.label_keeping import Checks
from serve_app.engine.requests import GenerationRequest, SamplingParams
from serve_app.prompts import Template


@serve.deployment(name="Augmenter")
class Augmenter(TextDeployment):
    async def augment(self, texts: list[str], params: SamplingParams | list[SamplingParams], checks: Checks | None = None) -> list[dict[str, Any]]:
        """Per text, in input order: distinct paraphrases (none equal to the input) and whether it was truncated.

        `params`: one SamplingParams for every text, or one per text (each with its own seed). `checks`:
        keep the label, oversample, drop near-copies (label_keeping.py); scored like /classify."""
        if checks is not None and checks.active:
            return await label_keeping.augment_checked(self, self.encoder, label_keeping.Templates.of(self.settings), texts, params, checks, self.settings.scoring)
        prompts = augmentation.prepare_batch(self.encoder, Template(self.settings.templates.augment), texts)
        outputs = await self.generate_many(augmentation.engine_requests(prompts, params))
        return augmentation.answers(self.encoder, texts, prompts, outputs)

    async def generate(self, task: str | None, prompt: str | None, values: dict[str, str], params: SamplingParams) -> dict[str, Any]:
        """A model-card task by name (its template filled from `values`), or a raw prompt."""
        if task is not None:
            encoded = augmentation.prepare_task(self.encoder, self.settings.task_template(task), values, task)
        else:
            encoded = augmentation.prepare_task(self.encoder, Template("{prompt}"), {"prompt": prompt or ""})
        output = await self.call_model("generate", GenerationRequest(encoded.input_ids, params))
        return {"text": self.encoder.decode(output[0]), "task": task, "truncated": encoded.truncated}

    def tasks(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "fields": list(Template(text).fields), "template": text}
            for name, text in self.settings.templates.tasks.items()
        ]
