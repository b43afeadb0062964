"""The service's text tasks in one process, without Ray: for bulk jobs, benchmarks and scripts.

Same prompts, validation and answers as the HTTP service (it reuses the modules the
deployments use); the engine runs each call's texts as one batch.
"""

from __future__ import annotations

from typing import Any

from serve_app import augmentation, classification
from serve_app.engine import GenerationRequest, SamplingParams, Seq2SeqEngine, load_model
from serve_app.engine.loading import LoadedModel
from serve_app.engine.tokenization import PromptEncoder
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

    def classify(self, texts: list[str], labels: list[str], mode: classification.Mode = "score") -> list[dict[str, Any]]:
        """One /classify answer per text, in order."""
        template = Template(self.settings.templates.classification)
        jobs = [classification.prepare(self.encoder, template, text, labels) for text in texts]
        if mode == "score":
            results = self.engine.score([classification.scoring_request(job) for job in jobs])
            return [classification.score_answer(job, result) for job, result in zip(jobs, results)]
        outputs = self.engine.generate([classification.generation_request(job) for job in jobs])
        return [classification.generate_answer(job, self.encoder.decode(output[0])) for job, output in zip(jobs, outputs)]

    def augment(self, texts: list[str], params: SamplingParams | None = None) -> list[dict[str, Any]]:
        """One /augment answer per text, in order."""
        params = params or SamplingParams()
        template = Template(self.settings.templates.augment)
        prompts = [augmentation.prepare(self.encoder, template, text) for text in texts]
        outputs = self.engine.generate([GenerationRequest(prompt.input_ids, params) for prompt in prompts])
        return [
            {"augmented_texts": augmentation.paraphrases(self.encoder, text.strip(), sequences), "truncated": prompt.truncated}
            for text, prompt, sequences in zip(texts, prompts, outputs)
        ]
