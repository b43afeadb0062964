"""Classifier: /classify and /classify_batch, the text work around the ModelReplicas' label scoring."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.deployments.text_deployment import TextDeployment
from serve_app.text.classification import Mode, Scoring


@serve.deployment(name="Classifier")
class Classifier(TextDeployment):
    async def classify(
        self,
        texts: list[str],
        labels: list[str],
        mode: Mode = "score",
        scoring: Scoring | None = None,
        background: bool = False,
    ) -> list[dict[str, Any]]:
        """One answer per text, in input order; `scoring` None means the configured default; `background`: after
        every interactive request (a bulk run)."""
        return await self.text_tasks.classify(self.model_calls(background), texts, labels, mode, scoring)
