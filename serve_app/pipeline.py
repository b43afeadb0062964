"""The service's text tasks in one process, without Ray: for bulk jobs, benchmarks and scripts.

The same TextTasks the deployments run (the same prompts, rules and answers); here the
model calls are the engine itself, each call's requests run as one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from serve_app.engine import (
    GenerationRequest,
    SamplingParams,
    ScoringRequest,
    Seq2SeqEngine,
    load_model,
)
from serve_app.engine.loading import LoadedModel
from serve_app.engine.requests import ScoringResult
from serve_app.settings import AppSettings
from serve_app.text.classification import Mode, Scoring
from serve_app.text.label_keeping import Checks
from serve_app.text.tasks import TextTasks
from serve_app.text.tokenization import PromptEncoder


class Pipeline:
    def __init__(self, settings: AppSettings, loaded: LoadedModel | None = None) -> None:
        self.settings = settings
        self.loaded = loaded or load_model(settings.model, settings.device, settings.dtype)
        self.engine = Seq2SeqEngine(self.loaded.model, settings.max_input_tokens, decode_graphs=settings.decode_graphs)
        self.encoder = PromptEncoder(self.loaded.tokenizer, settings.max_input_tokens)
        self.text_tasks = TextTasks(self.encoder, settings.prompt_templates(), settings.scoring)

    @classmethod
    def from_args(cls, args: dict[str, Any] | None = None) -> Pipeline:
        return cls(AppSettings.from_args(args))

    def classify(
        self, texts: list[str], labels: list[str], mode: Mode = "score", scoring: Scoring | None = None
    ) -> list[dict[str, Any]]:
        """One /classify answer per text, in order; `scoring` None means the settings' default."""
        return asyncio.run(self.text_tasks.classify(self, texts, labels, mode, scoring))

    def augment(
        self,
        texts: list[str],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        checks: Checks | None = None,
    ) -> list[dict[str, Any]]:
        """One /augment answer per text, in order; `params` for all texts or one per text; `checks` as
        /augment's keep_label, max_candidates and min_distance ask (label_keeping.py)."""
        return asyncio.run(self.text_tasks.augment(self, texts, params or SamplingParams(), checks))

    # ModelCalls: each list of requests runs as one engine batch.
    async def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[int]]]:
        return self.engine.generate(list(requests))

    async def score_many(self, requests: Sequence[ScoringRequest]) -> list[ScoringResult]:
        return self.engine.score(list(requests))
