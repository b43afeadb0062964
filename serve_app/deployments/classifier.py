"""Classifier: builds classification prompts, asks ModelReplica to score or generate, shapes answers."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app import classification
from serve_app.deployments.text_deployment import TextDeployment
from serve_app.prompts import Template


@serve.deployment(name="Classifier")
class Classifier(TextDeployment):
    async def classify(
        self, texts: list[str], labels: list[str], mode: classification.Mode = "score", scoring: classification.Scoring | None = None
    ) -> list[dict[str, Any]]:
        """One answer per text, in input order; `scoring` None means the configured default."""
        jobs = classification.prepare_batch(self.encoder, Template(self.settings.templates.classification), texts, labels)
        requests = classification.engine_requests(jobs, mode, scoring or self.settings.scoring)
        outputs = await (self.score_many(requests) if mode == "score" else self.generate_many(requests))
        return classification.answers(jobs, mode, list(outputs), self.encoder)
