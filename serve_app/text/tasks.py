"""The service's text tasks, each written once: classify, augment (plain or checked), a /generate task.

A call prepares engine requests from text (prompt, tokenization, the text rules), hands them
to the model through ModelCalls and shapes the answers. The text deployments (Classifier,
Generator) and the in-process Pipeline run exactly these; the benchmarks take their engine
requests from the same preparation, so they time what the service sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from serve_app.engine.requests import GenerationRequest, SamplingParams, ScoringRequest
from serve_app.text import augmentation, classification, label_keeping
from serve_app.text.classification import ClassifyJob, Mode, Scoring
from serve_app.text.label_keeping import Checks
from serve_app.text.model_calls import ModelCalls
from serve_app.text.prompts import RAW_PROMPT, PromptTemplates
from serve_app.text.tokenization import EncodedPrompt, PromptEncoder


class TextTasks:
    """The text work of every route, over one tokenizer, one set of templates and a default scoring."""

    def __init__(self, encoder: PromptEncoder, templates: PromptTemplates, scoring: Scoring = "vocabulary") -> None:
        self.encoder = encoder
        self.templates = templates
        self.scoring = scoring

    # ---------------------------------------------------------- classification
    def classify_jobs(self, texts: list[str], labels: list[str]) -> list[ClassifyJob]:
        return classification.prepare_batch(self.encoder, self.templates.classification, texts, labels)

    def classify_requests(
        self, jobs: list[ClassifyJob], mode: Mode = "score", scoring: Scoring | None = None
    ) -> list[ScoringRequest] | list[GenerationRequest]:
        """What the engine runs for `jobs`; `scoring` None means this service's default."""
        return classification.engine_requests(jobs, mode, scoring or self.scoring)

    async def classify(
        self,
        model: ModelCalls,
        texts: list[str],
        labels: list[str],
        mode: Mode = "score",
        scoring: Scoring | None = None,
    ) -> list[dict[str, Any]]:
        """One /classify answer per text, in input order."""
        jobs = self.classify_jobs(texts, labels)
        requests = self.classify_requests(jobs, mode, scoring)
        outputs: list[Any]
        if mode == "score":
            outputs = await model.score_many(cast(list[ScoringRequest], requests))
        else:
            outputs = await model.generate_many(cast(list[GenerationRequest], requests))
        return classification.answers(jobs, mode, outputs, self.encoder)

    # ------------------------------------------------------------ augmentation
    def augment_prompts(self, texts: list[str]) -> list[EncodedPrompt]:
        return augmentation.prepare_batch(self.encoder, self.templates.augment, texts)

    def augment_requests(
        self, texts: list[str], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[GenerationRequest]:
        """What the engine runs for a plain /augment_batch of `texts`."""
        return augmentation.engine_requests(self.augment_prompts(texts), params)

    async def augment(
        self,
        model: ModelCalls,
        texts: list[str],
        params: SamplingParams | Sequence[SamplingParams],
        checks: Checks | None = None,
    ) -> list[dict[str, Any]]:
        """Per text, in input order: distinct paraphrases (none equal to the input) and whether it was truncated.

        `params`: one SamplingParams for every text, or one per text (each with its own seed). `checks`:
        keep the label, oversample, drop near-copies (label_keeping.py), scored like /classify."""
        if checks is not None and checks.active:
            return await label_keeping.augment_checked(
                model, self.encoder, self.templates, texts, params, checks, self.scoring
            )
        prompts = self.augment_prompts(texts)
        outputs = await model.generate_many(augmentation.engine_requests(prompts, params))
        return augmentation.answers(self.encoder, texts, prompts, outputs)

    # ---------------------------------------------------------------- /generate
    async def generate(
        self, model: ModelCalls, task: str | None, prompt: str | None, values: Mapping[str, Any], params: SamplingParams
    ) -> dict[str, Any]:
        """A model-card task by name (its template filled from `values`), or a raw prompt."""
        if task is not None:
            encoded = augmentation.prepare_task(self.encoder, self.templates.task(task), values, task)
        else:
            encoded = augmentation.prepare_task(self.encoder, RAW_PROMPT, {"prompt": prompt or ""})
        [output] = await model.generate_many([GenerationRequest(encoded.input_ids, params)])
        return {"text": self.encoder.decode(output[0]), "task": task, "truncated": encoded.truncated}
