"""The model as the text layer sees it: lists of engine requests in, their answers out, in order.

The text deployments send each request to the ModelReplicas (batched there with everyone
else's work); the in-process Pipeline runs each list as one engine batch. The text layer
knows neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from serve_app.engine.requests import GenerationRequest, ScoringRequest, ScoringResult


class ModelCalls(Protocol):
    async def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[int]]]: ...

    async def score_many(self, requests: Sequence[ScoringRequest]) -> list[ScoringResult]: ...


class CountedCalls:
    """`calls`, counting the tokens they generate (what a key's daily budget and its metrics charge)."""

    def __init__(self, calls: ModelCalls) -> None:
        self.calls = calls
        self.generated_tokens = 0

    async def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[int]]]:
        outputs = await self.calls.generate_many(requests)
        self.generated_tokens += sum(len(sequence) for output in outputs for sequence in output)
        return outputs

    async def score_many(self, requests: Sequence[ScoringRequest]) -> list[ScoringResult]:
        return await self.calls.score_many(requests)
