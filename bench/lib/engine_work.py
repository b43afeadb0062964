"""The benchmark's work for the engine alone: requests built as the service builds them, and timed batches of them.

The text layer (serve_app.text.tasks.TextTasks) prepares the requests, so the engine runs
exactly what the service would send it. `timed_batches` runs them in batches of `batch`,
split over `lanes` threads as the ModelReplica's scheduler lanes split a busy replica's work
(serve_app/scheduling/lanes.py), each lane on its share of the torch threads.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.lib.workloads import LABELS, chinese_texts


@dataclass
class EngineWork:
    """Engine requests of one kind and the engine call that runs a list of them."""

    run: Callable[[list[Any]], Any]
    requests: list[Any]
    device: Any  # torch.device
    dtype_name: str
    dtype_reason: str

    def chunk(self, start: int, size: int) -> list[Any]:
        """`size` requests from `start`, wrapping around, so every batch has the same shape."""
        part = self.requests[start % len(self.requests) :][:size]
        return part + self.requests[: size - len(part)]


def pipeline(model: str, device: str = "auto", dtype: str = "auto"):
    """The in-process service (serve_app.pipeline.Pipeline) on `model`: its engine, tokenizer and text tasks."""
    from serve_app.pipeline import Pipeline
    from serve_app.settings import AppSettings

    return Pipeline(AppSettings(model=model, device=device, dtype=dtype))


def classify_work(service, count: int = 256, labels: list[str] | None = None, seed: int = 0) -> EngineWork:
    """Label scoring of `count` Chinese texts against `labels` (the workload's six by default)."""
    jobs = service.text_tasks.classify_jobs(chinese_texts(count, seed), list(labels or LABELS))
    return _work(service, service.engine.score, service.text_tasks.classify_requests(jobs))


def augment_work(
    service, count: int = 256, n: int = 2, max_new_tokens: int = 32, seed: int = 1, seeded: bool = False
) -> EngineWork:
    """Paraphrase generation, `n` sequences of `max_new_tokens` per text (random weights never stop early);
    `seeded`: text i samples with seed i, so two engines given the same logits pick the same tokens."""
    from serve_app.engine import SamplingParams

    params = [
        SamplingParams(num_return_sequences=n, max_new_tokens=max_new_tokens, seed=i if seeded else None)
        for i in range(count)
    ]
    return _work(
        service, service.engine.generate, service.text_tasks.augment_requests(chinese_texts(count, seed), params)
    )


def _work(service, run: Callable[[list[Any]], Any], requests: list[Any]) -> EngineWork:
    precision = service.loaded.precision
    return EngineWork(run, requests, service.loaded.device, precision.name, precision.reason)


def timed_batches(
    work: EngineWork, batch: int, repeats: int, threads: int | None = None, lanes: int | str = "auto"
) -> dict[str, Any]:
    """Seconds per batch of `batch` requests (after one warm-up), the batch split over the service's lanes."""
    import torch

    from serve_app.scheduling.lanes import lane_count

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if work.device.type == "cuda" else (lambda: None)
    lanes = lane_count(lanes, work.device.type, threads)
    # Each lane's thread runs torch on its share of the threads, as CoreShare gives busy lanes in the service.
    pool = ThreadPoolExecutor(
        max_workers=lanes, initializer=torch.set_num_threads, initargs=(max(1, threads // lanes),)
    )
    try:
        list(pool.map(work.run, [work.requests[:2]] * lanes))  # first-call allocations, on every lane thread
        seconds = []
        for repeat in range(repeats):
            parts = [work.chunk(repeat * batch, batch)[lane::lanes] for lane in range(lanes)]
            sync()
            started = time.perf_counter()
            list(pool.map(work.run, parts))
            sync()
            seconds.append(time.perf_counter() - started)
    finally:
        pool.shutdown()
    return {
        "batch": batch,
        "seconds": seconds,
        "requests_per_s": batch / statistics.mean(seconds),
        "best_requests_per_s": batch / min(seconds),
        "dtype": work.dtype_name,
        "threads": threads,
        "lanes": lanes,
    }
