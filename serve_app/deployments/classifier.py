"""Classifier: /classify and /classify_batch, the text work around the ModelReplicas' label scoring, with the cache
of `score` answers (serve_app/text/answer_cache.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter

from serve_app import tracing
from serve_app.deployments.handle_calls import await_or_cancel
from serve_app.deployments.text_deployment import Metered, TextDeployment, logger
from serve_app.text.answer_cache import AnswerCache, classification_key
from serve_app.text.classification import Mode, Scoring
from serve_app.text.model_calls import CountedCalls

DESCRIBE_TIMEOUT_S = 5.0


@serve.deployment(name="Classifier")
class Classifier(TextDeployment):
    def __init__(self, settings: dict[str, Any], replica: DeploymentHandle) -> None:
        super().__init__(settings, replica)
        cache = self.settings.classification_cache
        self.cache = AnswerCache(cache.entries, cache.max_bytes)
        self._model_identity: str | None = None  # the model, its checkpoint and its precision, once a replica said
        self.cache_lookups = Counter(
            "mt5_classification_cache",
            description="/classify score answers: cache hits and misses",
            tag_keys=("result",),
        )

    async def classify(
        self,
        texts: list[str],
        labels: list[str],
        mode: Mode = "score",
        scoring: Scoring | None = None,
        background: bool = False,
        trace: tracing.Carrier | None = None,
    ) -> Metered:
        """One answer per text, in input order; `scoring` None means the configured default; `background`: after
        every interactive request (a bulk run); `trace`: the Ingress's trace context."""
        with tracing.continued(trace), tracing.span("Classifier.classify", texts=len(texts), labels=len(labels)):
            return await self._classify(texts, labels, mode, scoring, background)

    async def _classify(
        self, texts: list[str], labels: list[str], mode: Mode, scoring: Scoring | None, background: bool
    ) -> Metered:
        calls = CountedCalls(self.model_calls(background))
        identity = await self._identity() if mode == "score" and self.cache.enabled else None
        if identity is None:
            return Metered(await self.text_tasks.classify(calls, texts, labels, mode, scoring), calls.generated_tokens)
        template = self.settings.templates.classification
        keys = [classification_key(identity, template, scoring or self.settings.scoring, labels, t) for t in texts]
        answers = [self.cache.get(key) for key in keys]
        missing = [index for index, answer in enumerate(answers) if answer is None]
        if missing:
            fresh = await self.text_tasks.classify(calls, [texts[i] for i in missing], labels, mode, scoring)
            for index, answer in zip(missing, fresh, strict=True):
                self.cache.put(keys[index], answer)
                answers[index] = answer
        if len(texts) > len(missing):
            self.cache_lookups.inc(len(texts) - len(missing), tags={"result": "hit"})
        if missing:
            self.cache_lookups.inc(len(missing), tags={"result": "miss"})
        return Metered(answers, calls.generated_tokens, cached=len(texts) - len(missing))

    async def _identity(self) -> str | None:
        """What the cache key says of the model: its spec, the checkpoint it resolved to and the precision a
        ModelReplica runs it in (asked once); None while no replica answers (the call then goes uncached)."""
        if self._model_identity is None:
            try:
                described = await asyncio.wait_for(
                    await_or_cancel(self.replica.describe.remote()), timeout=DESCRIBE_TIMEOUT_S
                )
            except Exception as exc:  # noqa: BLE001 - the answer comes from the model; only the cache waits
                logger.warning("Classifier: no ModelReplica described itself (%r); answering uncached", exc)
                return None
            self._model_identity = f"{self.settings.model}|{self.checkpoint}|{described.get('dtype')}"
        return self._model_identity
