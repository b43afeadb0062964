"""The service's text tasks in one process, without Ray: for bulk jobs, benchmarks and scripts.

Same prompts, validation and answers as the HTTP service (it reuses the modules the
deployments use); the engine runs each call's texts as one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from serve_app import augmentation, classification, label_keeping
from serve_app.engine import GenerationRequest, SamplingParams, ScoringRequest, Seq2SeqEngine, load_model
from serve_app.engine.loading import LoadedModel
from serve_app.engine.requests import ScoringResult
from serve_app.label_keeping import Checks
from serve_app.tokenization import PromptEncoder
from serve_app.prompts import Template
from serve_app.settings import AppSettings


class Pipeline:
    def __init__(self, settings: AppSettings, loaded: LoadedModel | None = None) -> None:
        self.settings = settings
        self.loaded = loaded or load_model(settings.model, settings.device, settings.dtype)
        self.engine = Seq2SeqEngine(self.loaded.model, settings.max_input_tokens)
        self.encoder = PromptEncoder(self.loaded.tokenizer, settings.max_input_tokens)

    @classmethod
    def from_args(cls, args: dict[str, Any] | None = None) -> Pipeline:
        return cls(AppSettings.from_args(args))

    def classify(
        self, texts: list[str], labels: list[str], mode: classification.Mode = "score", scoring: classification.Scoring | None = None
    ) -> list[dict[str, Any]]:
        """One /classify answer per text, in order; `scoring` None means the settings' default."""
        jobs = classification.prepare_batch(self.encoder, Template(self.settings.templates.classification), texts, labels)
        requests = classification.engine_requests(jobs, mode, scoring or self.settings.scoring)
        outputs = self.engine.score(requests) if mode == "score" else self.engine.generate(requests)
        return classification.answers(jobs, mode, outputs, self.encoder)

    def augment(
        self, texts: list[str], params: SamplingParams | Sequence[SamplingParams] | None = None, checks: Checks | None = None
    ) -> list[dict[str, Any]]:
        """One /augment answer per text, in order; `params` for all texts or one per text; `checks` as
        /augment's keep_label, max_candidates and min_distance ask (label_keeping.py)."""
        if checks is not None and checks.active:
            work = label_keeping.augment_checked(self, self.encoder, label_keeping.Templates.of(self.settings), texts, params or SamplingParams(), checks, self.settings.scoring)
            return asyncio.run(work)
        prompts = augmentation.prepare_batch(self.encoder, Template(self.settings.templates.augment), texts)
        outputs = self.engine.generate(augmentation.engine_requests(prompts, params or SamplingParams()))
        return augmentation.answers(self.encoder, texts, prompts, outputs)

    # label_keeping.ModelCalls: each round's requests run as one engine batch.
    async def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[int]]]:
        return self.engine.generate(list(requests))

    async def score_many(self, requests: Sequence[ScoringRequest]) -> list[ScoringResult]:
        return self.engine.score(list(requests))
