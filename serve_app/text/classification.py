"""Zero-shot classification as text work around the engine: validate, build prompts, shape answers.

Score mode asks the engine for each candidate's probability, so the answer is
always one of the candidates and the same input always gets the same answer.
Generate mode lets the model write freely, as the model card does, and reports
whether what it wrote is a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from serve_app.engine.requests import (
    MAX_NEW_TOKENS,
    GenerationRequest,
    SamplingParams,
    ScoringRequest,
    ScoringResult,
)
from serve_app.text.errors import (
    DuplicateLabelError,
    EmptyTextError,
    LabelCountError,
    TextInputError,
)
from serve_app.text.prompts import Template, classification_values, sanitize_label
from serve_app.text.tokenization import EncodedPrompt, PromptEncoder

MIN_LABELS = 2
MAX_LABELS = 50
MAX_LABEL_CHARS = 100
Mode = Literal["score", "generate"]
Scoring = Literal["vocabulary", "label_tokens"]


@dataclass(frozen=True)
class ClassifyJob:
    """One text prepared for classification."""

    text: str
    labels: list[str]  # as the client sent them, in the client's order
    prompt: EncodedPrompt
    label_ids: list[list[int]]  # tokens of each label as it appears in the prompt


def clean_label(label: object, field: str) -> str:
    """One label, as sent; raises on an empty, over-long or invisible label (nothing left once sanitised for the
    prompt)."""
    if not isinstance(label, str) or not label:
        raise TextInputError(field, "must be a non-empty string")
    if len(label) > MAX_LABEL_CHARS:
        raise TextInputError(field, f"must be at most {MAX_LABEL_CHARS} characters")
    if not sanitize_label(label):
        raise TextInputError(field, "must contain at least one visible character")
    return label


def clean_labels(labels: list[str], most: int = MAX_LABELS) -> list[str]:
    """The labels, as sent; raises on a count outside 2–`most`, a bad label, or the same label twice.

    Labels that differ as sent but read the same in the prompt once sanitised (":" and "-", say) stay
    apart: the model scores the same tokens for both, so they get the same probability, and ties keep the
    client's order."""
    if not isinstance(labels, list) or not (MIN_LABELS <= len(labels) <= most):
        raise LabelCountError(len(labels) if isinstance(labels, list) else 0, MIN_LABELS, most)
    cleaned = [clean_label(label, f"labels.{index}") for index, label in enumerate(labels)]
    for index, label in enumerate(cleaned):
        if label in cleaned[:index]:
            raise DuplicateLabelError(label)
    return cleaned


def prepare_job(
    encoder: PromptEncoder,
    template: Template,
    text: str,
    labels: list[str],
    field: str = "text",
    most: int = MAX_LABELS,
) -> ClassifyJob:
    if not isinstance(text, str) or not text.strip():
        raise EmptyTextError(field)
    labels = clean_labels(labels, most)
    prompt_labels = [sanitize_label(label) for label in labels]
    prompt = encoder.encode(template, classification_values(text.strip(), prompt_labels))
    label_ids = [encoder.label_ids(label) for label in prompt_labels]
    for index, ids in enumerate(label_ids):
        if not ids:  # e.g. only characters the tokenizer drops: nothing to score
            raise TextInputError(f"labels.{index}", "has no characters the model can read")
    return ClassifyJob(text=text, labels=labels, prompt=prompt, label_ids=label_ids)


def text_field(index: int, count: int) -> str:
    """How an error names the text: `text` for a single request, `texts.3` inside a batch."""
    return "text" if count == 1 else f"texts.{index}"


def prepare_batch(encoder: PromptEncoder, template: Template, texts: list[str], labels: list[str]) -> list[ClassifyJob]:
    return [
        prepare_job(encoder, template, text, labels, field=text_field(i, len(texts))) for i, text in enumerate(texts)
    ]


def engine_requests(
    jobs: list[ClassifyJob], mode: Mode, scoring: Scoring = "vocabulary"
) -> list[ScoringRequest] | list[GenerationRequest]:
    """What the engine runs for each job: label scoring (normalised as `scoring` says), or greedy generation."""
    return (
        [scoring_request(job, scoring) for job in jobs]
        if mode == "score"
        else [generation_request(job) for job in jobs]
    )


def answers(jobs: list[ClassifyJob], mode: Mode, outputs: list[Any], encoder: PromptEncoder) -> list[dict[str, Any]]:
    """The HTTP answers, in job order, from the engine's outputs for `engine_requests(jobs, mode)`."""
    if mode == "score":
        return [score_answer(job, result) for job, result in zip(jobs, outputs, strict=True)]
    return [generate_answer(job, encoder.decode(output[0])) for job, output in zip(jobs, outputs, strict=True)]


def scoring_request(job: ClassifyJob, scoring: Scoring = "vocabulary") -> ScoringRequest:
    return ScoringRequest(input_ids=job.prompt.input_ids, label_ids=job.label_ids, normalization=scoring)


def score_answer(job: ClassifyJob, result: ScoringResult) -> dict[str, Any]:
    """transformers' zero-shot pipeline shape: labels sorted best first, probabilities summing to 1."""
    # Stable sort: equal probabilities keep the client's order, so ties break the same way every time.
    order = sorted(range(len(job.labels)), key=lambda index: -result.probabilities[index])
    return {
        "sequence": job.text,
        "label": job.labels[order[0]],
        "labels": [job.labels[index] for index in order],
        "scores": [result.probabilities[index] for index in order],
        "truncated": job.prompt.truncated,
    }


def generation_request(job: ClassifyJob) -> GenerationRequest:
    """Greedy decoding, long enough for the longest label and a little more."""
    longest = max(len(ids) for ids in job.label_ids)
    params = SamplingParams(
        num_return_sequences=1, max_new_tokens=min(MAX_NEW_TOKENS, longest + 8), temperature=0.0, top_k=0, top_p=1.0
    )
    return GenerationRequest(input_ids=job.prompt.input_ids, params=params)


def generate_answer(job: ClassifyJob, generated: str) -> dict[str, Any]:
    """`label` is the candidate the model wrote, or null when it wrote something else."""
    by_prompt_form: dict[str, str] = {}
    for label in job.labels:  # labels that read the same in the prompt: the first, as ties are broken
        by_prompt_form.setdefault(sanitize_label(label), label)
    written = by_prompt_form.get(sanitize_label(generated))
    return {"sequence": job.text, "label": written, "generated": generated, "truncated": job.prompt.truncated}
