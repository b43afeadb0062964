"""The engine-only ceiling: the service's own engine on the benchmark's work, one batch at a time, no HTTP, no Ray.

    .venv/bin/python -m bench.ceiling --model <checkpoint> --workload augment --batch 32

Prompts are built and tokenized as the service builds them (outside the timing);
the clock covers `engine.score` / `engine.generate` on `batch` requests at once,
the same shape 32 closed-loop clients give the service. With lanes (the
service's `scheduler_lanes`, "auto" resolved the same way) the batch is split
evenly and each part runs on its own thread with its share of the torch threads,
as the ModelReplica's lanes run under load. Serve's throughput over this is the
serving layer's efficiency. The engine imports no Ray, so this also runs alone
on a GPU box.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from bench.workloads import augment_workload, classify_workload


@dataclass
class EngineWork:
    """The benchmark's requests, built as the service builds them, and the engine call that runs a list of them."""

    run: Callable[[list[Any]], Any]
    requests: list[Any]
    device: torch.device
    dtype: torch.dtype

    def chunk(self, start: int, size: int) -> list[Any]:
        """`size` requests from `start`, wrapping around, so every batch has the same shape."""
        part = self.requests[start % len(self.requests):][:size]
        return part + self.requests[: size - len(part)]


def engine_work(model: str, workload: str, n: int = 2, max_length: int = 32, device: str = "auto", dtype: str = "auto") -> EngineWork:
    from serve_app import augmentation, classification
    from serve_app.engine import SamplingParams, Seq2SeqEngine, load_model
    from serve_app.text.prompts import Template
    from serve_app.settings import AppSettings
    from serve_app.text.tokenization import PromptEncoder

    settings = AppSettings(model=model, device=device, dtype=dtype)
    loaded = load_model(model, device, dtype)
    engine = Seq2SeqEngine(loaded.model, settings.max_input_tokens)
    encoder = PromptEncoder(loaded.tokenizer, settings.max_input_tokens)
    if workload == "classify":
        bodies = classify_workload().bodies
        jobs = [classification.prepare_job(encoder, Template(settings.templates.classification), b["text"], b["labels"]) for b in bodies]
        return EngineWork(engine.score, classification.engine_requests(jobs, "score"), loaded.device, loaded.dtype)
    bodies = augment_workload(num_return_sequences=n, max_length=max_length).bodies
    prompts = [augmentation.prepare_paraphrase(encoder, Template(settings.templates.augment), b["text"]) for b in bodies]
    # Seeded like nothing in particular: random weights never stop early, so every row runs max_length steps.
    requests = augmentation.engine_requests(prompts, SamplingParams(num_return_sequences=n, max_new_tokens=max_length))
    return EngineWork(engine.generate, requests, loaded.device, loaded.dtype)


def measure(model: str, workload: str, batch: int, repeats: int, n: int = 2, max_length: int = 32,
            device: str = "auto", dtype: str = "auto", threads: int | None = None, lanes: int | str = "auto") -> dict[str, Any]:
    from serve_app.scheduling.lanes import lane_count

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = engine_work(model, workload, n, max_length, device, dtype)
    requests, run = work.requests, work.run
    sync = torch.cuda.synchronize if work.device.type == "cuda" else (lambda: None)
    lanes = lane_count(lanes, work.device.type, threads)
    # Each lane's thread runs torch on its share of the threads, as CoreShare gives busy lanes in the service.
    pool = ThreadPoolExecutor(max_workers=lanes, initializer=torch.set_num_threads, initargs=(max(1, threads // lanes),))
    list(pool.map(run, [requests[:2]] * lanes))  # warm-up: first-call allocations, every lane thread
    seconds = []
    cpu_started = time.process_time()  # every thread of this process: the lanes' torch work
    for repeat in range(repeats):
        chunk = work.chunk(repeat * batch, batch)
        parts = [chunk[lane::lanes] for lane in range(lanes)]
        sync()
        started = time.perf_counter()
        list(pool.map(run, parts))
        sync()
        seconds.append(time.perf_counter() - started)
    cpu_seconds = time.process_time() - cpu_started
    pool.shutdown()
    return {
        "workload": workload,
        "batch": batch,
        "repeats": repeats,
        "seconds": seconds,
        "requests_per_s": batch / statistics.mean(seconds),
        "best_requests_per_s": batch / min(seconds),
        # cores the engine kept busy: with requests_per_s, the work it does per CPU second
        "cpu_cores": cpu_seconds / sum(seconds),
        "device": str(work.device),
        "dtype": str(work.dtype).removeprefix("torch."),
        "threads": threads,
        "lanes": lanes,
        "device_name": torch.cuda.get_device_name(0) if work.device.type == "cuda" else "cpu",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--workload", choices=["classify", "augment"], required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n", type=int, default=2, help="num_return_sequences (augment)")
    parser.add_argument("--max-length", type=int, default=32, help="new tokens (augment)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lanes", default="auto", help='batches run side by side, each on threads/lanes torch threads ("auto": as the service)')
    args = parser.parse_args(argv)
    result = measure(args.model, args.workload, args.batch, args.repeats, args.n, args.max_length, args.device, args.dtype, args.threads, args.lanes)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
