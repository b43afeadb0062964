"""What a bulk job does to its texts: classify or augment, with which settings, and the result columns.

A TaskSpec is small and picklable: it travels to the Ray Data workers, which run it on
a Pipeline chunk by chunk (run_chunk). The HTTP runner sends the same settings to the
service instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from serve_app.engine.errors import EngineInputError
from serve_app.engine.requests import SamplingParams
from serve_app.text.classification import Mode, Scoring, clean_labels
from serve_app.text.errors import TextInputError
from serve_app.text.label_keeping import Checks, check_rules

if TYPE_CHECKING:
    from serve_app.pipeline import Pipeline  # imports torch: the service's light deployments read TaskSpec without it

TaskKind = Literal["augment", "classify", "evaluate"]


@dataclass(frozen=True)
class Outcome:
    """One record's answer (the service's answer object) or why the engine refused it."""

    answer: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    kind: TaskKind
    labels: tuple[str, ...] = ()
    mode: Mode = "score"
    scoring: Scoring = "vocabulary"  # score mode's normalisation (README, "How classification scores a label")
    sampling: SamplingParams = SamplingParams()  # seed: the job's seed, from which each record's seed derives
    checks: Checks = Checks()  # augment: keep the label, oversample, drop near-copies (label_keeping.py)
    # evaluate: other wordings of a label, each scored in its place on the same sample (jobs/evaluation.py)
    wordings: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "augment" and self.checks.active:
            check_rules(self.checks, self.sampling.num_return_sequences)
        if self.kind == "evaluate":
            clean_labels(list(self.labels))
            for label, alternatives in self.wordings:
                if label not in self.labels:
                    raise TextInputError("wordings", f"{label!r} is not one of the labels")
                for alternative in alternatives:
                    clean_labels([*(other for other in self.labels if other != label), alternative])
        if self.kind == "classify":
            clean_labels(list(self.labels))  # raises TextInputError, before any model work starts
            if self.mode not in ("score", "generate"):
                raise TextInputError("mode", "must be 'score' or 'generate'")
            if self.scoring not in ("vocabulary", "label_tokens"):
                raise TextInputError("scoring", "must be 'vocabulary' or 'label_tokens'")

    @property
    def columns(self) -> list[str]:
        """Output fields, in order; the answer's `sequence` is the input text, written as `text`."""
        if self.kind == "augment":
            keep_label = ["label", "label_scores"] if self.checks.keep_label is not None else []
            return [
                "id",
                "text",
                "augmented_texts",
                "truncated",
                *keep_label,
                *(["candidates"] if self.checks.active else []),
            ]
        if self.kind == "evaluate":
            return ["id", "text", "gold", "label", "labels", "scores", "truncated"]
        if self.mode == "score":
            return ["id", "text", "label", "labels", "scores", "truncated"]
        return ["id", "text", "label", "generated", "truncated"]

    def record_params(self, line: int) -> SamplingParams:
        """Sampling for the record on input line `line`: its own seed, whatever chunk or run it lands in."""
        return dataclasses.replace(self.sampling, seed=record_seed(self.sampling.seed, line))

    def describe(self) -> dict[str, Any]:
        """The settings that decide the answers (part of the resume fingerprint)."""
        if self.kind == "classify":
            return {"kind": self.kind, "labels": list(self.labels), "mode": self.mode, "scoring": self.scoring}
        if self.kind == "evaluate":
            wordings = {label: list(alternatives) for label, alternatives in self.wordings}
            return {"kind": self.kind, "labels": list(self.labels), "scoring": self.scoring, "wordings": wordings}
        checks = {"checks": dataclasses.asdict(self.checks)} if self.checks.active else {}
        return {"kind": self.kind, **dataclasses.asdict(self.sampling), **checks}


def parse_labels(value: str) -> tuple[str, ...]:
    """`物流延迟,商品缺货` or with full-width commas `物流延迟，商品缺货`; blanks around labels are dropped."""
    return tuple(label.strip() for label in re.split(r"[,，]", value) if label.strip())


def record_seed(job_seed: int | None, line: int) -> int | None:
    """A record's seed from the job's seed and its input line: stable across batching and resumes."""
    if job_seed is None:
        return None
    digest = hashlib.sha256(f"{job_seed}:{line}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # SamplingParams takes seeds below 2**63


def run_chunk(pipeline: Pipeline, spec: TaskSpec, lines: list[int], texts: list[str]) -> list[Outcome]:
    """The engine's answers for one chunk, as one batch; a text the engine refuses only fails itself."""
    try:
        return [Outcome(answer=answer) for answer in _answers(pipeline, spec, lines, texts)]
    except (EngineInputError, TextInputError) as exc:
        if len(texts) == 1:
            return [Outcome(error=f"{exc.field}: {exc.rule}")]
    # Rare (the reader already refuses blank and over-long texts): find the culprit one text at a time.
    return [
        outcome
        for line, text in zip(lines, texts, strict=True)
        for outcome in run_chunk(pipeline, spec, [line], [text])
    ]


def _answers(pipeline: Pipeline, spec: TaskSpec, lines: list[int], texts: list[str]) -> list[dict[str, Any]]:
    if spec.kind == "evaluate":
        return pipeline.classify(texts, list(spec.labels), "score", spec.scoring)
    if spec.kind == "classify":
        return pipeline.classify(texts, list(spec.labels), spec.mode, spec.scoring)
    if spec.sampling.seed is None:
        return pipeline.augment(texts, spec.sampling, spec.checks)
    return pipeline.augment(
        texts, [spec.record_params(line) for line in lines], spec.checks
    )  # each record its own seed, one batch
