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
