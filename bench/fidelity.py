"""Fidelity of the faster settings against float32 full-vocabulary scoring, and what each costs.

    .venv/bin/python -m bench.fidelity                   # bench checkpoint and demo model, 256 inputs each
    .venv/bin/python -m bench.fidelity --models demo --inputs 64   # a quick look

For each model, every variant scores the same classify inputs (Chinese texts, 2-8
candidate labels drawn from a pool of 24) and is compared with the reference,
float32 weights normalised over the full vocabulary (the model's own likelihood):

- label_tokens: float32, normalised over the labels' tokens (`scoring: label_tokens`);
- bfloat16 and int8 weights, full vocabulary (`dtype: bfloat16` / `int8`);
- batch invariance: each input scored alone against inside its batch of 32, per dtype.

Reported: max and mean |delta p| over all label probabilities, top-label agreement,
and requests/s at batch 32 (the variants timed in alternation, three batches each). Writes
bench/results/fidelity.json and the fidelity section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from bench.workloads import chinese_texts

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LABEL_POOL = [
    "体育", "财经", "科技", "娱乐", "教育", "健康", "物流延迟", "商品缺货", "售后响应慢", "价格争议", "天气", "美食",
    "旅游", "汽车", "房产", "游戏", "军事", "文化", "农业", "法律", "积极", "消极", "中性", "其他",
]
BATCH = 32


def classify_inputs(count: int, seed: int = 11) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [(text, rng.sample(LABEL_POOL, rng.randint(2, 8))) for text in chinese_texts(count, seed=seed)]


def score_all(engine, requests, batch: int = BATCH) -> tuple[list[list[float]], float]:
    """Probabilities per request, scored `batch` at a time; and the best requests/s over the batches."""
    probabilities, best = [], 0.0
    engine.score(requests[:2])  # first-call allocations
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        began = time.perf_counter()
        results = engine.score(chunk)
        elapsed = time.perf_counter() - began
        if len(chunk) == batch:
            best = max(best, batch / elapsed)
        probabilities += [result.probabilities for result in results]
    return probabilities, best


def compare(reference: list[list[float]], other: list[list[float]]) -> dict[str, float]:
    deltas = [abs(a - b) for ref, oth in zip(reference, other) for a, b in zip(ref, oth)]
    agree = sum(max(range(len(r)), key=r.__getitem__) == max(range(len(o)), key=o.__getitem__) for r, o in zip(reference, other))
    return {"max_abs_dp": max(deltas), "mean_abs_dp": sum(deltas) / len(deltas), "top_label_agreement": agree / len(reference)}


def measure(model: str, count: int, device: str, dtypes: list[str]) -> dict[str, Any]:
    from serve_app import classification
    from serve_app.engine import Seq2SeqEngine, load_model
    from serve_app.text.prompts import Template
    from serve_app.settings import AppSettings
    from serve_app.text.tokenization import PromptEncoder

    settings = AppSettings(model=model)
    inputs = classify_inputs(count)
    engines: dict[str, Any] = {}
    requests: dict[str, list[Any]] = {}
    reasons: dict[str, str] = {}
    for dtype in ["float32", *[d for d in dtypes if d != "float32"]]:
        loaded = load_model(model, device, dtype)
        encoder = PromptEncoder(loaded.tokenizer, settings.max_input_tokens)
        jobs = [classification.prepare_job(encoder, Template(settings.templates.classification), text, labels) for text, labels in inputs]
        name = f"{loaded.precision.name}, full vocabulary"
        engines[name] = Seq2SeqEngine(loaded.model, settings.max_input_tokens)
        requests[name] = classification.engine_requests(jobs, "score", "vocabulary")
        reasons[name] = loaded.precision.reason
        if dtype == "float32":
            engines["float32, label_tokens"] = engines[name]
            requests["float32, label_tokens"] = [dataclasses.replace(r, normalization="label_tokens") for r in requests[name]]
    reference_name = "float32, full vocabulary"
    probabilities = {name: score_all(engines[name], requests[name])[0] for name in engines}
    speeds = interleaved_speeds(engines, requests)
    out: dict[str, Any] = {"model": model, "inputs": count, "variants": {}}
    for name in engines:
        figures: dict[str, Any] = {"requests_per_s": speeds[name], "x_reference_speed": speeds[name] / speeds[reference_name]}
        if name != reference_name:
            figures.update(compare(probabilities[reference_name], probabilities[name]))
        if "label_tokens" not in name:
            alone = [engines[name].score([request])[0].probabilities for request in requests[name][:BATCH]]
            figures["alone_vs_batch"] = compare(probabilities[name][:BATCH], alone)
            figures["dtype_reason"] = reasons[name]
        out["variants"][name if name != reference_name else f"{reference_name} (reference)"] = figures
    return out


def interleaved_speeds(engines: dict[str, Any], requests: dict[str, list[Any]], rounds: int = 3) -> dict[str, float]:
    """Requests/s at batch 32 of each variant, timed in alternation so the shared box's drift hits all alike."""
    seconds = {name: 0.0 for name in engines}
    for round_ in range(rounds):
        for name, engine in engines.items():
            chunk = requests[name][round_ * BATCH : (round_ + 1) * BATCH]
            began = time.perf_counter()
            engine.score(chunk)
            seconds[name] += time.perf_counter() - began
    return {name: rounds * BATCH / spent for name, spent in seconds.items()}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Run of {results['date']} on {results['machine']}; torch {results['torch']}, {results['threads']} threads.",
        "",
        f"Command: `{results['command']}`",
        "",
        "Reference: float32 weights, label probabilities normalised over the full vocabulary (the default `scoring: vocabulary`). "
        "|Δp| is over every candidate's probability; agreement is the share of inputs with the same top label; "
        f"speed is classify requests/s at batch {BATCH}, the variants timed in alternation (3 batches each); alone vs batch compares the first {BATCH} inputs scored one by one "
        "with the same inputs inside their batch, in the same precision.",
        "",
        "| model | variant | req/s | × reference | max \\|Δp\\| | mean \\|Δp\\| | top label agrees | alone vs batch: max \\|Δp\\|, agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in results["models"]:
        for name, v in model["variants"].items():
            invariance = v.get("alone_vs_batch")
            inv = f"{invariance['max_abs_dp']:.1e}, {invariance['top_label_agreement']:.0%}" if invariance else "–"
            lines.append(
                f"| {model['label']} | {name} | {v['requests_per_s']:.2f} | {v.get('x_reference_speed', 1.0):.2f}x | "
                f"{v.get('max_abs_dp', 0.0):.4f} | {v.get('mean_abs_dp', 0.0):.5f} | {v.get('top_label_agreement', 1.0):.1%} | {inv} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.checkpoint import build_checkpoint
    from bench.report import run_header, save_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bench", "demo"], help="'bench' (mT5-base-shaped checkpoint), 'demo', or a model spec")
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "int8"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "fidelity.json")
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-md", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    results: dict[str, Any] = {**run_header("bench.fidelity", argv), "models": []}
    for name in args.models:
        spec = str(build_checkpoint()) if name == "bench" else name
        print(f"[fidelity] {name}: {args.inputs} inputs ...", flush=True)
        measured = measure(spec, args.inputs, args.device, args.dtypes)
        measured["label"] = {"bench": "mT5-base-shaped (random)", "demo": "demo"}.get(name, name)
        for variant, figures in measured["variants"].items():
            print(f"[fidelity] {name} {variant}: {json.dumps(figures)}", flush=True)
        results["models"].append(measured)
    save_results(results, args.out, None if args.no_md else args.md, "fidelity", markdown(results), "Fidelity: precision and normalisation (bench.fidelity)")
    return results


if __name__ == "__main__":
    main()
