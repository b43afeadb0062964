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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from bench.workloads import augment_workload, classify_workload


def measure(model: str, workload: str, batch: int, repeats: int, n: int = 2, max_length: int = 32,
            device: str = "auto", dtype: str = "auto", threads: int | None = None, lanes: int | str = "auto") -> dict[str, Any]:
    from serve_app import augmentation, classification
    from serve_app.engine import SamplingParams, Seq2SeqEngine, load_model
    from serve_app.tokenization import PromptEncoder
    from serve_app.prompts import Template
    from serve_app.scheduling.lanes import lane_count
    from serve_app.settings import AppSettings

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    settings = AppSettings(model=model, device=device, dtype=dtype)
    loaded = load_model(model, device, dtype)
    engine = Seq2SeqEngine(loaded.model, settings.max_input_tokens)
    encoder = PromptEncoder(loaded.tokenizer, settings.max_input_tokens)
    if workload == "classify":
        bodies = classify_workload().bodies
        jobs = [classification.prepare_job(encoder, Template(settings.templates.classification), b["text"], b["labels"]) for b in bodies]
        requests = classification.engine_requests(jobs, "score")
        run = engine.score
    else:
        bodies = augment_workload(num_return_sequences=n, max_length=max_length).bodies
        prompts = [augmentation.prepare_paraphrase(encoder, Template(settings.templates.augment), b["text"]) for b in bodies]
        # Seeded like nothing in particular: random weights never stop early, so every row runs max_length steps.
        requests = augmentation.engine_requests(prompts, SamplingParams(num_return_sequences=n, max_new_tokens=max_length))
        run = engine.generate
    sync = torch.cuda.synchronize if loaded.device.type == "cuda" else (lambda: None)
    lanes = lane_count(lanes, loaded.device.type, threads)
    # Each lane's thread runs torch on its share of the threads, as CoreShare gives busy lanes in the service.
    pool = ThreadPoolExecutor(max_workers=lanes, initializer=torch.set_num_threads, initargs=(max(1, threads // lanes),))
    list(pool.map(run, [requests[:2]] * lanes))  # warm-up: first-call allocations, every lane thread
    seconds = []
    cpu_started = time.process_time()  # every thread of this process: the lanes' torch work
    for repeat in range(repeats):
        chunk = requests[(repeat * batch) % len(requests):][:batch]
        chunk = chunk + requests[: batch - len(chunk)]
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
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "threads": threads,
        "lanes": lanes,
        "device_name": torch.cuda.get_device_name(0) if loaded.device.type == "cuda" else "cpu",
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
