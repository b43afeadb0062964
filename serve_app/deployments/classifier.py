"""Classifier: builds classification prompts, asks ModelReplica to score or generate, shapes answers."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from serve_app import classification
from serve_app.deployments.text_deployment import TextDeployment
from serve_app.prompts import Template


@serve.deployment(name="Classifier")
class Classifier(TextDeployment):
    async def classify(self, texts: list[str], labels: list[str], mode: classification.Mode = "score") -> list[dict[str, Any]]:
        """One answer per text, in input order."""
        template = Template(self.settings.templates.classification)
        jobs = [
            classification.prepare(self.encoder, template, text, labels, field="text" if len(texts) == 1 else f"texts.{i}")
            for i, text in enumerate(texts)
        ]
        if mode == "score":
            results = await asyncio.gather(*(self.replica.score.remote(classification.scoring_request(job)) for job in jobs))
            return [classification.score_answer(job, result) for job, result in zip(jobs, results)]
        outputs = await asyncio.gather(*(self.replica.generate.remote(classification.generation_request(job)) for job in jobs))
        return [classification.generate_answer(job, self.encoder.decode(output[0])) for job, output in zip(jobs, outputs)]
