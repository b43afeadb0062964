"""Augmentation (paraphrase) and the card's other generation tasks as text work around the engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from serve_app.engine.requests import GenerationRequest, SamplingParams
from serve_app.text.errors import EmptyTextError
from serve_app.text.prompts import Template
from serve_app.text.tokenization import EncodedPrompt, PromptEncoder


def prepare_paraphrase(encoder: PromptEncoder, template: Template, text: str, field: str = "text") -> EncodedPrompt:
    if not isinstance(text, str) or not text.strip():
        raise EmptyTextError(field)
    return encoder.encode(template, {"text": text.strip()})


def prepare_batch(encoder: PromptEncoder, template: Template, texts: list[str]) -> list[EncodedPrompt]:
    return [
        prepare_paraphrase(encoder, template, text, field="text" if len(texts) == 1 else f"texts.{i}")
        for i, text in enumerate(texts)
    ]


def params_per_prompt(params: SamplingParams | Sequence[SamplingParams], count: int) -> list[SamplingParams]:
    """The same sampling for all `count` prompts, or one SamplingParams per prompt (e.g. its own seed)."""
    per_prompt = [params] * count if isinstance(params, SamplingParams) else list(params)
    if len(per_prompt) != count:
        raise ValueError(f"{len(per_prompt)} SamplingParams for {count} prompts")
    return per_prompt


def engine_requests(
    prompts: list[EncodedPrompt], params: SamplingParams | Sequence[SamplingParams]
) -> list[GenerationRequest]:
    """One request per prompt, sampled as `params` says (params_per_prompt)."""
    return [
        GenerationRequest(prompt.input_ids, p)
        for prompt, p in zip(prompts, params_per_prompt(params, len(prompts)), strict=True)
    ]


def answers(
    encoder: PromptEncoder, texts: list[str], prompts: list[EncodedPrompt], outputs: list[list[list[int]]]
) -> list[dict[str, Any]]:
    """One /augment answer per text, in order."""
    return [
        {"augmented_texts": paraphrases(encoder, text.strip(), sequences), "truncated": prompt.truncated}
        for text, prompt, sequences in zip(texts, prompts, outputs, strict=True)
    ]


def whitespace_blind(text: str) -> str:
    """The text as paraphrases are compared: without any whitespace."""
    return "".join(text.split())


def _same_text(a: str, b: str) -> bool:
    return whitespace_blind(a) == whitespace_blind(b)


def paraphrases(encoder: PromptEncoder, source: str, sequences: list[list[int]]) -> list[str]:
    """Decoded outputs, distinct, non-empty and none equal to the input, in sampling order."""
    kept: list[str] = []
    for ids in sequences:
        text = encoder.decode(ids)
        if text and not _same_text(text, source) and not any(_same_text(text, other) for other in kept):
            kept.append(text)
    return kept


def prepare_task(
    encoder: PromptEncoder, template: Template, values: Mapping[str, Any], task: str | None = None
) -> EncodedPrompt:
    """A /generate task: every slot of its template must be a non-empty string (Template.slot_values)."""
    return encoder.encode(template, template.slot_values(values, task))
