"""Augmentation with checks: paraphrases that keep the text's label and are not near-copies.

A text's candidates are sampled in rounds of at most MAX_RETURN_SEQUENCES, within its
budget (`max_candidates`), each round sized for what is still missing at the keep rate
seen so far. A candidate is kept when it is new (not empty, not the input,
not a repeat) and at least `min_distance` from the input and from every text kept
before it, and, with `keep_label`, when /classify's own scoring (the same prompt, the
same scoring, the same tie rule) puts the wanted label on top. Rounds stop once a text
has what it asked for. A text's rounds depend only on its own seed and its own
candidates, so with a seed its answer is the same alone and in any batch.

The model is reached through ModelCalls (model_calls.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from serve_app import tracing
from serve_app.engine.requests import (
    MAX_RETURN_SEQUENCES,
    GenerationRequest,
    SamplingParams,
)
from serve_app.text import augmentation, classification
from serve_app.text.errors import TextInputError
from serve_app.text.model_calls import ModelCalls
from serve_app.text.prompts import PromptTemplates, Template
from serve_app.text.tokenization import EncodedPrompt, PromptEncoder

MAX_CANDIDATES = 50  # candidates sampled per text at most, whatever the request asks
OVERSAMPLING = 3  # the default budget with checks: this many candidates per paraphrase asked for
NGRAM = 2  # min_distance compares character bigrams (Jaccard), blind to whitespace
FIRST_ROUND_RATE = 0.5  # before a text's first round, assume half its candidates pass: sample twice what is missing


@dataclass(frozen=True)
class KeepLabel:
    labels: list[str]
    label: str | None = (
        None  # None: the text's own top label under `labels`; one not among them joins them as a candidate
    )

    def candidates(self) -> list[str]:
        """The labels a paraphrase is classified under: `labels`, and `label` after them when it is not one of them."""
        return self.labels if self.label is None or self.label in self.labels else [*self.labels, self.label]


@dataclass(frozen=True)
class Checks:
    """What an augment request asks of its paraphrases beyond sampling them; the default asks nothing."""

    keep_label: KeepLabel | None = None
    max_candidates: int | None = None  # None: OVERSAMPLING x asked with a check, else exactly what is asked
    min_distance: float = 0.0

    @property
    def active(self) -> bool:
        return self.keep_label is not None or self.max_candidates is not None or self.min_distance > 0

    def budget(self, asked: int) -> int:
        if self.max_candidates is not None:
            return self.max_candidates
        return min(MAX_CANDIDATES, OVERSAMPLING * asked) if self.active else asked


def check_rules(checks: Checks, asked: int) -> None:
    """The rules of a Checks object (raise TextInputError naming the field), for callers without the HTTP schema."""
    if checks.max_candidates is not None and not (asked <= checks.max_candidates <= MAX_CANDIDATES):
        raise TextInputError("max_candidates", f"must be from num_return_sequences ({asked}) to {MAX_CANDIDATES}")
    if not 0.0 <= checks.min_distance <= 1.0:
        raise TextInputError("min_distance", "must be from 0 to 1")
    if checks.keep_label is not None:
        wanted_label(checks.keep_label)


def wanted_label(keep: KeepLabel) -> str | None:
    """The asked label, after the labels' own rules; one not among the labels joins them as a candidate,
    so the candidates may number one more than the labels' limit."""
    try:
        classification.clean_labels(keep.labels)
    except TextInputError as error:
        raise TextInputError(f"keep_label.{error.field}", error.rule) from None
    return None if keep.label is None else classification.clean_label(keep.label, "keep_label.label")


def ngram_distance(a: str, b: str, n: int = NGRAM) -> float:
    """1 - Jaccard similarity of the texts' character n-grams, whitespace ignored: 0 same, 1 nothing shared."""
    grams_a, grams_b = _ngrams(a, n), _ngrams(b, n)
    union = grams_a | grams_b
    return 1.0 - len(grams_a & grams_b) / len(union) if union else 0.0


def _ngrams(text: str, n: int) -> set[str]:
    compact = augmentation.whitespace_blind(text)
    if len(compact) < n:
        return {compact} if compact else set()
    return {compact[i : i + n] for i in range(len(compact) - n + 1)}


def round_seed(seed: int | None, round_index: int) -> int | None:
    """Round 0 samples with the request's own seed (as plain /augment does); later rounds derive theirs."""
    if seed is None or round_index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:round:{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # SamplingParams takes seeds below 2**63


@dataclass
class Selection:
    """One text's candidates so far: what was kept, with its label probability, and why others were not."""

    source: str
    prompt: EncodedPrompt
    params: SamplingParams
    budget: int
    min_distance: float
    label: str | None = None
    kept: list[str] = field(default_factory=list)
    label_scores: list[float] = field(default_factory=list)
    tried: int = 0
    repeated: int = 0  # empty, the input itself, or a text already seen
    too_close: int = 0
    other_label: int = 0
    rounds: int = 0
    _seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._seen.add(augmentation.whitespace_blind(self.source))  # the input itself counts as seen

    @property
    def asked(self) -> int:
        return self.params.num_return_sequences

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.asked or self.tried >= self.budget

    def next_request(self) -> GenerationRequest:
        """The next round: enough candidates for what is still missing at the keep rate seen so far
        (FIRST_ROUND_RATE before any), within the budget and one request's limit."""
        missing = self.asked - len(self.kept)
        rate = len(self.kept) / self.tried if self.tried else FIRST_ROUND_RATE
        wanted = math.ceil(missing / rate) if rate > 0 else self.budget
        size = max(1, min(MAX_RETURN_SEQUENCES, self.budget - self.tried, wanted))
        params = dataclasses.replace(
            self.params, num_return_sequences=size, seed=round_seed(self.params.seed, self.rounds)
        )
        self.rounds += 1
        return GenerationRequest(self.prompt.input_ids, params)

    def fresh(self, texts: list[str]) -> list[str]:
        """The round's new candidates, in sampling order: not empty, not seen, not too close to the input."""
        self.tried += len(texts)
        out = []
        for text in texts:
            key = augmentation.whitespace_blind(text)
            if not key or key in self._seen:
                self.repeated += 1
            elif self.min_distance and ngram_distance(text, self.source) < self.min_distance:
                self.too_close += 1
            else:
                out.append(text)
            self._seen.add(key)
        return out

    def consider(self, text: str, top_label: str | None = None, probability: float | None = None) -> None:
        """Keep `text` unless it has another top label or is too close to a kept text (checked in this order)."""
        if len(self.kept) >= self.asked:
            return
        if self.label is not None and top_label != self.label:
            self.other_label += 1
        elif self.min_distance and any(ngram_distance(text, other) < self.min_distance for other in self.kept):
            self.too_close += 1
        else:
            self.kept.append(text)
            if probability is not None:
                self.label_scores.append(probability)

    def answer(self, keep_label: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "augmented_texts": list(self.kept),
            "truncated": self.prompt.truncated,
            "candidates": {
                "asked": self.asked,
                "tried": self.tried,
                "kept": len(self.kept),
                "max_candidates": self.budget,
                "repeated": self.repeated,
                "too_close": self.too_close,
                "other_label": self.other_label,
            },
        }
        if keep_label:
            out["label"] = self.label
            out["label_scores"] = list(self.label_scores)
        return out


async def augment_checked(
    model: ModelCalls,
    encoder: PromptEncoder,
    templates: PromptTemplates,
    texts: list[str],
    params: SamplingParams | Sequence[SamplingParams],
    checks: Checks,
    scoring: classification.Scoring = "vocabulary",
) -> list[dict[str, Any]]:
    """One /augment answer per text, in input order, its paraphrases checked as `checks` asks."""
    per_text = augmentation.params_per_prompt(params, len(texts))
    check_rules(checks, max(p.num_return_sequences for p in per_text))
    prompts = augmentation.prepare_batch(encoder, templates.augment, texts)
    selections = [
        Selection(text.strip(), prompt, p, checks.budget(p.num_return_sequences), checks.min_distance)
        for text, prompt, p in zip(texts, prompts, per_text, strict=True)
    ]
    keep = checks.keep_label
    if keep is not None:
        await _choose_labels(model, encoder, templates.classification, selections, keep, scoring)
    round_number = 0
    while pending := [s for s in selections if not s.done]:
        round_number += 1
        with tracing.span("keep_label round", round=round_number, texts=len(pending)):
            await _round(model, encoder, templates, pending, keep, scoring)
    return [s.answer(keep is not None) for s in selections]


async def _round(
    model: ModelCalls,
    encoder: PromptEncoder,
    templates: PromptTemplates,
    pending: list[Selection],
    keep: KeepLabel | None,
    scoring: classification.Scoring,
) -> None:
    """One round of candidates for the texts still short of what they asked for: sampled, then checked."""
    outputs = await model.generate_many([s.next_request() for s in pending])
    rounds = [
        (s, s.fresh([encoder.decode(ids) for ids in sequences])) for s, sequences in zip(pending, outputs, strict=True)
    ]
    if keep is None:
        for selection, candidates in rounds:
            for text in candidates:
                selection.consider(text)
        return
    labels = keep.candidates()
    jobs = [
        (
            s,
            classification.prepare_job(
                encoder, templates.classification, text, labels, most=classification.MAX_LABELS + 1
            ),
        )
        for s, candidates in rounds
        for text in candidates
    ]
    results = await model.score_many([classification.scoring_request(job, scoring) for _, job in jobs])
    for (selection, job), result in zip(jobs, results, strict=True):
        answer = classification.score_answer(job, result)  # /classify's own answer: same tie rule
        assert selection.label is not None  # the rounds above gave every selection its label
        selection.consider(job.text.strip(), answer["label"], result.probabilities[job.labels.index(selection.label)])


async def _choose_labels(
    model: ModelCalls,
    encoder: PromptEncoder,
    template: Template,
    selections: list[Selection],
    keep: KeepLabel,
    scoring: classification.Scoring,
) -> None:
    """The asked label for every text, or where none is given, the text's own top label (as /classify answers)."""
    asked = wanted_label(keep)
    if asked is not None:
        for selection in selections:
            selection.label = asked
        return
    jobs = [
        classification.prepare_job(
            encoder, template, s.source, keep.labels, field=classification.text_field(i, len(selections))
        )
        for i, s in enumerate(selections)
    ]  # no label asked: the labels alone
    results = await model.score_many([classification.scoring_request(job, scoring) for job in jobs])
    for selection, job, result in zip(selections, jobs, results, strict=True):
        selection.label = classification.score_answer(job, result)["label"]
