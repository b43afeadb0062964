"""The serving core without Ray or HTTP: N closed-loop asyncio clients against the scheduler lanes, next to the engine ceiling.

    .venv/bin/python -m bench.scheduler_loop --workload augment --clients 32 --duration 60

Separates what continuous batching itself costs (this) from what Ray Serve's
processes and HTTP cost (bench.run's serve / this). Imports no Ray: runs alone on a
GPU box too (`--device cuda`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import torch

from bench.ceiling import measure as ceiling
from bench.loadgen import Sample, spread_throughput
from bench.workloads import augment_workload, classify_workload


async def closed_loop(loop, requests: list[Any], kind: str, clients: int, warmup_s: float, duration_s: float, round_trip_s: float = 0.0) -> dict[str, Any]:
    done: list[tuple[float, float]] = []
    stop = asyncio.Event()
    counter = {"next": 0}

    async def client() -> None:
        while not stop.is_set():
            request = requests[counter["next"] % len(requests)]
            counter["next"] += 1
            started = time.perf_counter()
            await asyncio.sleep(round_trip_s / 2)  # the way in through Serve's hops (proxy, ingress, text deployment)
            await (loop.generate(request) if kind == "augment" else loop.score(request))
            await asyncio.sleep(round_trip_s / 2)  # and the way back
            done.append((started, time.perf_counter()))

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(warmup_s)
    begin = time.perf_counter()
    await asyncio.sleep(duration_s)
    end = time.perf_counter()
    stop.set()
    await asyncio.gather(*tasks)
    window = [(s, e) for s, e in done if begin <= e <= end]
    latencies = sorted(e - s for s, e in window)
    return {
        # each answer spread over its lifetime (bench/loadgen.py: clients that finish together answer in bursts)
        "requests_per_s": spread_throughput([Sample(s, e, 200) for s, e in done], (begin, end)),
        "answers_per_s": len(window) / (end - begin),
        "p50_s": latencies[len(latencies) // 2] if latencies else None,
        "answers": len(window),
    }


def measure(model: str, workload: str, clients: int, duration_s: float, warmup_s: float, device: str = "auto", dtype: str = "auto",
            threads: int | None = None, lanes: int | str = "auto", round_trip_s: float = 0.0, max_batch_rows: int = 64,
            max_prefill_tokens: int = 2048, ceiling_repeats: int = 2) -> dict[str, Any]:
    """The serving core's closed-loop throughput for `workload`, then the engine ceiling at a batch of `clients`, in one process."""
    from serve_app import augmentation, classification
    from serve_app.engine import SamplingParams, Seq2SeqEngine, load_model
    from serve_app.text.prompts import Template
    from serve_app.scheduling.config import SchedulerConfig
    from serve_app.scheduling.lanes import Lanes, lane_count
    from serve_app.scheduling.scheduler import Scheduler
    from serve_app.settings import AppSettings
    from serve_app.text.tokenization import PromptEncoder

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    settings = AppSettings(model=model, device=device, dtype=dtype)
    loaded = load_model(model, device, dtype)
    engine = Seq2SeqEngine(loaded.model, settings.max_input_tokens)
    encoder = PromptEncoder(loaded.tokenizer, settings.max_input_tokens)
    if workload == "augment":
        bodies = augment_workload().bodies
        prompts = [augmentation.prepare_paraphrase(encoder, Template(settings.templates.augment), body["text"]) for body in bodies]
        requests = augmentation.engine_requests(prompts, SamplingParams(num_return_sequences=2, max_new_tokens=32))
    else:
        bodies = classify_workload().bodies
        jobs = [classification.prepare_job(encoder, Template(settings.templates.classification), b["text"], b["labels"]) for b in bodies]
        requests = classification.engine_requests(jobs, "score")
    lane_total = lane_count(lanes, loaded.device.type, threads)
    config = SchedulerConfig(max_batch_rows=max_batch_rows, max_prefill_tokens=max_prefill_tokens)
    loop = Lanes([Scheduler(engine, config) for _ in range(lane_total)], cores=threads)
    try:
        served = asyncio.run(closed_loop(loop, requests, workload, clients, warmup_s, duration_s, round_trip_s))
    finally:
        loop.stop()
    del engine, loaded
    engine_only = ceiling(model, workload, clients, repeats=ceiling_repeats, device=device, dtype=dtype, threads=threads, lanes=lane_total)
    return {
        "workload": workload,
        "clients": clients,
        "scheduler_loop": served,
        "engine_ceiling": engine_only,
        "share_of_ceiling": served["requests_per_s"] / engine_only["requests_per_s"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the mT5-base-shaped bench checkpoint")
    parser.add_argument("--workload", choices=["classify", "augment"], default="augment")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-batch-rows", type=int, default=64)
    parser.add_argument("--max-prefill-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lanes", default="auto", help='scheduler lanes ("auto": as the service)')
    parser.add_argument("--round-trip", type=float, default=0.0, help="seconds each request spends outside the scheduler (Serve's hops stand-in)")
    args = parser.parse_args(argv)
    if args.model is None:
        from bench.checkpoint import build_checkpoint

        args.model = str(build_checkpoint())
    result = measure(args.model, args.workload, args.clients, args.duration, args.warmup, args.device, args.dtype, args.threads, args.lanes,
                     args.round_trip, args.max_batch_rows, args.max_prefill_tokens)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
