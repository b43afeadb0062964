"""Fidelity of the faster settings: their label probabilities against float32 full-vocabulary scoring, and their speed.

    .venv/bin/python -m bench fidelity                               # benchmark checkpoint and demo model, 256 inputs each
    .venv/bin/python -m bench fidelity --models /path/to/real/model  # the real weights, where they are at hand
    .venv/bin/python -m bench fidelity --quick                       # the demo model, 32 inputs (not results)

For each model, every variant scores the same classification inputs (Chinese texts, 2-8
candidate labels drawn from a pool of 24) and is compared with the reference, float32 weights
normalised over the full vocabulary (the model's own likelihood):

- label_tokens: float32, normalised over the labels' tokens (`scoring: label_tokens`);
- each other number format (`dtype: bfloat16`, `int8`, `auto`), full vocabulary;
- batch invariance: each input scored alone against inside its batch of 32, per format.

Reported: largest and mean |Δp| over all label probabilities, top-label agreement, and
requests/s at batch 32 (the variants timed in alternation).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from bench.lib import results
from bench.lib.machine import log as _log
from bench.lib.machine import run_header
from bench.lib.probabilities import classify_inputs, compare

BATCH = 32
REFERENCE = "float32, full vocabulary"


def log(message: str) -> None:
    _log("fidelity", message)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=None, help="'bench' (the mT5-base-shaped checkpoint), 'demo', or model specs (default: bench demo)")
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "int8", "auto"], help="formats compared with float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="the demo model, 32 inputs: a smoke run, not results")
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    models = args.models or (["demo"] if args.quick else ["bench", "demo"])
    count = BATCH if args.quick else args.inputs
    out: dict[str, Any] = {**run_header("fidelity", getattr(args, "argv", [])), "threads": torch.get_num_threads(), "models": []}
    for name in models:
        spec = _bench_checkpoint() if name == "bench" else name
        log(f"{name}: {count} inputs ...")
        measured = measure(spec, count, args.device, args.dtypes)
        measured["label"] = {"bench": "mT5-base-shaped (random)", "demo": "demo"}.get(name, results.relative(name))
        out["models"].append(measured)
    section = markdown(out)
    path = results.save("fidelity-quick" if args.quick else "fidelity", out, section, out_dir=args.out, page=results.page_for(args.out, args.quick))
    log(f"wrote {results.relative(path)}")
    print(section)
    return out


def _bench_checkpoint() -> str:
    from bench.lib.checkpoint import build_checkpoint

    return str(build_checkpoint(log=log))


def measure(model: str, count: int, device: str, dtypes: list[str]) -> dict[str, Any]:
    """Every variant's probabilities on the same inputs, against the reference's."""
    from bench.lib.engine_work import pipeline

    inputs = classify_inputs(count)
    engines: dict[str, Any] = {}
    requests: dict[str, list[Any]] = {}
    reasons: dict[str, str] = {}
    for dtype in ["float32", *[d for d in dtypes if d != "float32"]]:
        service = pipeline(model, device, dtype)
        name = f"{service.loaded.precision.name}, full vocabulary" if dtype != "auto" else f"auto ({service.loaded.precision.name}), full vocabulary"
        jobs = [service.text_tasks.classify_jobs([text], labels)[0] for text, labels in inputs]
        engines[name] = service.engine
        requests[name] = service.text_tasks.classify_requests(jobs, "score", "vocabulary")
        reasons[name] = service.loaded.precision.reason
        if dtype == "float32":
            engines["float32, label_tokens"] = service.engine
            requests["float32, label_tokens"] = [dataclasses.replace(r, normalization="label_tokens") for r in requests[name]]
    probabilities = {name: score_all(engines[name], requests[name]) for name in engines}
    speeds = interleaved_speeds(engines, requests)
    out: dict[str, Any] = {"model": results.relative(model) if model != "demo" else model, "inputs": count, "variants": {}}
    for name in engines:
        figures: dict[str, Any] = {"requests_per_s": speeds[name], "x_reference_speed": speeds[name] / speeds[REFERENCE]}
        if name != REFERENCE:
            figures.update(compare(probabilities[REFERENCE], probabilities[name]))
        if "label_tokens" not in name:
            alone = [engines[name].score([request])[0].probabilities for request in requests[name][:BATCH]]
            figures["alone_vs_batch"] = compare(probabilities[name][:BATCH], alone)
            figures["dtype_reason"] = reasons[name]
        out["variants"][name if name != REFERENCE else f"{REFERENCE} (reference)"] = figures
    return out


def score_all(engine, requests: list[Any], batch: int = BATCH) -> list[list[float]]:
    """Probabilities per request, scored `batch` at a time."""
    probabilities = []
    for start in range(0, len(requests), batch):
        probabilities += [result.probabilities for result in engine.score(requests[start : start + batch])]
    return probabilities


def interleaved_speeds(engines: dict[str, Any], requests: dict[str, list[Any]], rounds: int = 3) -> dict[str, float]:
    """Requests/s at batch 32 of each variant, timed in alternation so the machine's drift hits all alike."""
    seconds = {name: 0.0 for name in engines}
    for engine, chunk in ((engines[name], requests[name][:2]) for name in engines):
        engine.score(chunk)  # first-call allocations
    for round_ in range(rounds):
        for name, engine in engines.items():
            chunk = requests[name][(round_ * BATCH) % len(requests[name]):][:BATCH]
            began = time.perf_counter()
            engine.score(chunk)
            seconds[name] += (time.perf_counter() - began) * BATCH / len(chunk)
    return {name: rounds * BATCH / spent for name, spent in seconds.items()}


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"{out['threads']} torch threads. Reference: float32 weights, probabilities normalised over the full vocabulary (the default "
        "`scoring: vocabulary`). |Δp| is over every candidate's probability; agreement is the share of inputs with the same top label; "
        f"speed is classify requests/s at batch {BATCH}, the variants alternated; alone vs batch scores the first {BATCH} inputs one by one "
        "against inside their batch, in the same format.",
        "",
        "| model | variant | req/s | × reference | max \\|Δp\\| | mean \\|Δp\\| | top label agrees | alone vs batch: max \\|Δp\\|, agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in out["models"]:
        for name, v in model["variants"].items():
            invariance = v.get("alone_vs_batch")
            inv = f"{invariance['max_abs_dp']:.1e}, {invariance['top_label_agreement']:.0%}" if invariance else "–"
            lines.append(
                f"| {model['label']} | {name} | {v['requests_per_s']:.2f} | {v.get('x_reference_speed', 1.0):.2f}x | "
                f"{v.get('max_abs_dp', 0.0):.4f} | {v.get('mean_abs_dp', 0.0):.5f} | {v.get('top_label_agreement', 1.0):.1%} | {inv} |"
            )
    return "\n".join(lines) + "\n"
