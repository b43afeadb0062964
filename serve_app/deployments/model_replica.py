"""ModelReplica: the only deployment that holds weights and touches torch.

Requests from every Classifier/Augmenter replica meet in `@serve.batch` queues and
run as one forward pass. Tensor work runs on one worker thread, so the event loop
keeps accepting requests into the next batch while a batch computes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from ray import serve
from ray.serve.metrics import Counter as MetricCounter
from ray.serve.metrics import Histogram

from serve_app.engine import GenerationRequest, ScoringRequest, Seq2SeqEngine, load_model
from serve_app.engine.requests import ScoringResult
from serve_app.settings import AppSettings

logger = logging.getLogger("ray.serve")

DEFAULT_BATCHING = {"max_batch_size": 32, "batch_wait_timeout_s": 0.01}
_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]
_TIME_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]


class RowLimit:
    """The live max_batch_size of generation, shared with the items queued for a batch."""

    def __init__(self, rows: int) -> None:
        self.rows = rows


def _rows(items: list[tuple[float, GenerationRequest, RowLimit]]) -> int:
    """A generation batch's size in decoder rows: each returned sequence is a row.

    A request with more rows than a whole batch counts as one full batch, so it runs
    alone; Serve would otherwise fail it ("Size of item is greater than max_batch_size").
    """
    return sum(min(request.params.num_return_sequences, limit.rows) for _, request, limit in items)


@serve.deployment(name="ModelReplica")
class ModelReplica:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = AppSettings.model_validate(settings)
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (1): null means every core of the node instead
        # (measured: 1.18 cores used vs 0.56, classify 3.7 vs 2.8 req/s on 2 cores, BENCHMARKS.md).
        torch.set_num_threads(self.settings.torch_threads or os.cpu_count() or 1)
        self.loaded = load_model(self.settings.model, self.settings.device, self.settings.dtype)
        self.engine = Seq2SeqEngine(self.loaded.model, self.settings.max_input_tokens)
        self._row_limit = RowLimit(DEFAULT_BATCHING["max_batch_size"])
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt5-engine")
        self._batch_size_metric = Histogram(
            "mt5_batch_size", description="Requests per engine batch", boundaries=_SIZE_BUCKETS, tag_keys=("kind",)
        )
        self._batch_seconds = Histogram(
            "mt5_batch_seconds", description="Engine time per batch", boundaries=_TIME_BUCKETS, tag_keys=("kind",)
        )
        self._queued_seconds = Histogram(
            "mt5_queue_wait_seconds", description="Time a request waited before its batch ran", boundaries=_TIME_BUCKETS, tag_keys=("kind",)
        )
        self._tokens = MetricCounter("mt5_generated_tokens", description="Tokens generated")
        logger.info("ModelReplica ready: %s", self.loaded.describe())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live batching knobs from config.yaml's user_config (no restart)."""
        config = {**DEFAULT_BATCHING, **(user_config or {})}
        self._row_limit.rows = int(config["max_batch_size"])
        for method in (self._generate_batch, self._score_batch):
            method.set_max_batch_size(int(config["max_batch_size"]))
            method.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))
        logger.info("ModelReplica batching: %s", config)

    # Public entry points validate one request before it joins a batch, so a bad
    # request fails alone instead of failing everyone it was batched with.
    async def generate(self, request: GenerationRequest) -> list[list[int]]:
        self._validate(request.input_ids)
        return await self._generate_batch((time.monotonic(), request, self._row_limit))

    async def score(self, request: ScoringRequest) -> ScoringResult:
        self._validate(request.input_ids)
        for label in request.label_ids:
            self._validate(label)
        return await self._score_batch((time.monotonic(), request))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=_rows)
    async def _generate_batch(self, items: list[tuple[float, GenerationRequest, RowLimit]]) -> list[list[list[int]]]:
        results = await self._run("generate", self.engine.generate, [(enqueued, request) for enqueued, request, _ in items])
        generated = sum(len(seq) for result in results for seq in result)
        if generated:  # Ray counters refuse inc(0); a batch whose rows all drew </s> first generated nothing
            self._tokens.inc(generated)
        return results

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _score_batch(self, items: list[tuple[float, ScoringRequest]]) -> list[ScoringResult]:
        return await self._run("score", self.engine.score, items)

    async def _run(self, kind: str, fn, items: list[tuple[float, Any]]) -> list[Any]:
        started = time.monotonic()
        for enqueued, _ in items:
            self._queued_seconds.observe(started - enqueued, tags={"kind": kind})
        self._batch_size_metric.observe(len(items), tags={"kind": kind})
        results = await asyncio.get_running_loop().run_in_executor(self._worker, fn, [request for _, request in items])
        elapsed = time.monotonic() - started
        self._batch_seconds.observe(elapsed, tags={"kind": kind})
        # One line per batch (not per request): how well requests are being merged, readable in any log viewer.
        logger.info(
            "batch kind=%s size=%d max_wait_ms=%.1f compute_ms=%.1f",
            kind, len(items), 1000 * max(started - enqueued for enqueued, _ in items), 1000 * elapsed,
        )
        return results

    def _validate(self, ids: list[int]) -> None:
        self.engine._check_ids(ids, "input_ids")

    def describe(self) -> dict[str, Any]:
        return self.loaded.describe()
