"""The model as the text layer sees it: lists of engine requests in, their answers out, in order.

The text deployments send each request to the ModelReplicas (batched there with everyone
else's work); the in-process Pipeline runs each list as one engine batch. The text layer
knows neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from serve_app.engine.requests import GenerationRequest, ScoringRequest, ScoringResult


class ModelCalls(Protocol):
    async def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[int]]]: ...

    async def score_many(self, requests: Sequence[ScoringRequest]) -> list[ScoringResult]: ...


class CountedCalls:
    """`calls`, counting the tokens they generate (what a key's daily budget and its metrics charge);
    `on_generated` hears each call's count as it comes (a dataset job's, which has no answer to wait for)."""

    def __init__(self, calls: ModelCalls, on_generated: Callable[[int], None] | None = None) -> None:
        self.calls = calls
        self.on_generated = on_generated
        self.generated_tokens = 0

    async def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[int]]]:
        outputs = await self.calls.generate_many(requests)
        tokens = sum(len(sequence) for output in outputs for sequence in output)
        self.generated_tokens += tokens
        if self.on_generated is not None:
            self.on_generated(tokens)
        return outputs

    async def score_many(self, requests: Sequence[ScoringRequest]) -> list[ScoringResult]:
        return await self.calls.score_many(requests)
