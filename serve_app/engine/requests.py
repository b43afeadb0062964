"""Plain data the engine takes: token ids in, per-request sampling parameters.

These travel between Ray deployments, so they are small picklable dataclasses of
Python ints and floats, never tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from serve_app.engine.errors import ParameterRangeError

# Ranges of the HTTP contract (docs/http-api.md); the engine enforces them too, so a
# bulk job or a direct caller gets the same rules as an HTTP client.
MAX_RETURN_SEQUENCES = 10
MAX_NEW_TOKENS = 512
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 1000

# The sampling defaults, here only: SamplingParams, the HTTP schemas (and through their OpenAPI document, the UI)
# and mt5-bulk take them from here.
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 50
DEFAULT_TOP_P = 0.95


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples. temperature 0 means greedy; top_k 0 means no top-k cut."""

    num_return_sequences: int = 1
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ParameterRangeError(name, rule)

        check(
            "num_return_sequences",
            _is_int(self.num_return_sequences) and 1 <= self.num_return_sequences <= MAX_RETURN_SEQUENCES,
            f"must be an integer from 1 to {MAX_RETURN_SEQUENCES}",
        )
        check(
            "max_length",
            _is_int(self.max_new_tokens) and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
            f"must be an integer from 1 to {MAX_NEW_TOKENS} (new tokens)",
        )
        check(
            "temperature",
            _is_number(self.temperature) and 0.0 <= self.temperature <= MAX_TEMPERATURE,
            f"must be a number from 0 to {MAX_TEMPERATURE} (0 = greedy)",
        )
        check(
            "top_k", _is_int(self.top_k) and 0 <= self.top_k <= MAX_TOP_K, f"must be an integer from 0 to {MAX_TOP_K}"
        )
        check("top_p", _is_number(self.top_p) and 0.0 < self.top_p <= 1.0, "must be a number with 0 < top_p <= 1")
        check(
            "seed",
            self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**63),
            "must be null or an integer from 0 to 2^63-1",
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GenerationRequest:
    """One encoder input and how to sample from it."""

    input_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class ScoringRequest:
    """One encoder input and the token ids of each candidate label (without the closing </s>).

    normalization: "vocabulary" (the model's own likelihood) or "label_tokens" (serve_app/engine/scoring.py)."""

    input_ids: list[int]
    label_ids: list[list[int]]
    normalization: str = "vocabulary"


@dataclass(frozen=True)
class ScoringResult:
    """Per candidate, in the request's order: summed log-probability and softmax probability."""

    log_scores: list[float]
    probabilities: list[float]
