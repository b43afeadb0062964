"""On a GPU machine, without Ray: the engine's latency, memory and batches, the serving core under load, and seeded
invariance.

    bash bench/gpu_wheels.sh                  # here, once: the wheels the GPU machine's Python lacks, into .wheels/
    bash bench/gpu_suite.sh "$OUT"            # there (the device tool, carry [".wheels"]): this command, in one call
    .venv/bin/python -m bench gpu --device cpu --quick --out /tmp/gpu   # here: the same code path on the demo model

Ray's wheel is too large to carry to a lent GPU machine, so this measures the engine and the
serving core (the ModelReplica's scheduler lanes) directly, on the mT5-base-shaped checkpoint:

- augment_latency: one /augment of 3 sequences x 64 tokens, alone (the seed article: 380 ms on an A10G);
- decode_graphs: the decoding step replayed as CUDA graphs (config.yaml's `decode_graphs`) against launched
  kernels, alone and at 32 rows, alternated, and whether the seeded tokens are the same (on a CPU
  rehearsal: the fixed-shape step without capture);
- memory: weights plus the decoding cache for 16 rows (the seed: 14.2 GB);
- classify_batch: label scoring at batch 64;
- classify_clients: closed-loop /classify clients against the scheduler lanes, raised until p95 reaches
  1 s (the seed: 12 clients on an A10G);
- seeded_invariance: seeded sampling alone against inside a batch of 32;
- against_baseline: the engine at batch 32 against transformers `generate` one request at a time;
- fidelity: bfloat16 label probabilities against float32.

It refuses to run on `--device cuda` where torch sees no CUDA: CPU figures must never be labelled
as a GPU's. Each part is written to `<out>/gpu.json` as soon as it ends, so a run cut short by the
machine's time limit keeps what it finished.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lib import results
from bench.lib.machine import log as _log
from bench.lib.machine import run_header

P95_LIMIT_S = 1.0


def log(message: str) -> None:
    _log("gpu", message)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json (the device tool's $OUT)")
    parser.add_argument(
        "--model", default=None, help="model spec (default: the benchmark checkpoint; demo with --quick)"
    )
    parser.add_argument("--device", default="cuda", help="cuda (refused without CUDA) or cpu, for a rehearsal")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--parts", nargs="+", default=None, help="only these parts (default: all)")
    parser.add_argument("--quick", action="store_true", help="seconds-long windows: a smoke run, not results")
    parser.add_argument(
        "--save-page", action="store_true", help="also write bench/results/gpu.json and regenerate BENCHMARKS.md"
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            f"bench gpu: --device {args.device}, but this torch ({torch.__version__}, CUDA build {torch.version.cuda}) "
            "sees no "
            "usable CUDA device; run it on the GPU machine, or pass --device cpu to rehearse on the CPU (figures "
            "labelled cpu)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or ("demo" if args.quick else _bench_checkpoint())
    out: dict[str, Any] = {
        **run_header("gpu", getattr(args, "argv", [])),
        "device": args.device,
        "cuda": torch.version.cuda,
        "model": results.relative(model) if model != "demo" else model,
        "quick": args.quick,
        "parts": {},
    }
    for name, run in parts(args, model).items():
        if args.parts and name not in args.parts:
            continue
        log(f"{name} ...")
        started = time.monotonic()
        try:
            out["parts"][name] = {"result": run()}
        except Exception:  # noqa: BLE001 - one failed part must not lose the others' figures
            out["parts"][name] = {"error": traceback.format_exc()}
        out["parts"][name]["seconds"] = round(time.monotonic() - started, 1)
        log(
            f"{name} done in {out['parts'][name]['seconds']:.0f} s"
            + (" (failed)" if "error" in out["parts"][name] else "")
        )
        (args.out / "gpu.json").write_text(
            json.dumps({**out, "section": markdown(out)}, indent=2, ensure_ascii=False, default=str)
        )
    section = markdown(out)
    if args.save_page:
        results.save("gpu", out, section)
    print(section)
    return out


def _bench_checkpoint() -> str:
    from bench.lib.checkpoint import build_checkpoint

    return str(build_checkpoint(log=log))


def parts(args: argparse.Namespace, model: str) -> dict[str, Callable[[], Any]]:
    """The parts, in the order they run: the cheapest and most wanted first."""
    from bench.lib.engine_work import pipeline

    service = pipeline(model, args.device, args.dtype)
    repeats = 2 if args.quick else 10
    return {
        "augment_latency": lambda: augment_latency(service, repeats),
        "decode_graphs": lambda: decode_graphs(service, 2 if args.quick else 5),
        "memory": lambda: memory(service),
        "classify_batch": lambda: classify_batch(service, repeats),
        "classify_clients": lambda: classify_clients(service, args.quick),
        "seeded_invariance": lambda: seeded_invariance(service),
        "against_baseline": lambda: against_baseline(service, model, args.device, args.quick),
        "fidelity": lambda: fidelity(model, args.device, 8 if args.quick else 64),
    }


def _sync(service) -> None:
    import torch

    if service.loaded.device.type == "cuda":
        torch.cuda.synchronize()


def _seconds(service, call: Callable[[], Any], repeats: int) -> list[float]:
    call()  # first-call allocations, kernel selection
    seconds = []
    for _ in range(repeats):
        seconds.append(_timed(service, call))
    return seconds


def augment_latency(service, repeats: int) -> dict[str, Any]:
    from serve_app.engine import SamplingParams

    request = service.text_tasks.augment_requests(
        ["这家餐厅的服务态度很好,上菜速度也快"], SamplingParams(num_return_sequences=3, max_new_tokens=64, seed=1)
    )
    seconds = _seconds(service, lambda: service.engine.generate(request), repeats)
    return {
        "work": "3 sequences x 64 new tokens, alone",
        "median_s": statistics.median(seconds),
        "best_s": min(seconds),
        "seed_article_a10g_s": 0.380,
    }


def memory(service) -> dict[str, Any]:
    """Peak device memory while 16 rows decode 64 tokens: the weights plus the cache."""
    import torch

    from serve_app.engine import SamplingParams

    if service.loaded.device.type != "cuda":
        return {"skipped": "device memory is measured on CUDA only"}
    requests = service.text_tasks.augment_requests(
        ["这家餐厅的服务态度很好,上菜速度也快"] * 8, SamplingParams(num_return_sequences=2, max_new_tokens=64)
    )
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    service.engine.generate(requests)
    torch.cuda.synchronize()
    weights = sum(p.numel() * p.element_size() for p in service.loaded.model.parameters())
    return {
        "rows": 16,
        "tokens": 64,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "weights_gib": weights / 2**30,
        "seed_article_gib": 14.2,
    }


def classify_batch(service, repeats: int) -> dict[str, Any]:
    from bench.lib.engine_work import classify_work

    work = classify_work(service, 64)
    seconds = _seconds(service, lambda: work.run(work.requests[:64]), repeats)
    return {"batch": 64, "texts_per_s": 64 / statistics.median(seconds)}


def classify_clients(service, quick: bool) -> dict[str, Any]:
    """/classify clients against the scheduler lanes, raised until p95 reaches a second."""
    from bench.lib import scheduler_loop
    from bench.lib.engine_work import classify_work

    work = classify_work(service, 256)
    points = []
    for clients in [1, 4] if quick else [1, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128]:
        point = scheduler_loop.measure(
            service, work, clients, duration_s=1.0 if quick else 10.0, warmup_s=0.3 if quick else 3.0
        )
        points.append(point)
        log(f"classify clients {clients}: {point['requests_per_s']:.1f} req/s, p95 {point['p95_s']}")
        if point["p95_s"] is None or point["p95_s"] >= P95_LIMIT_S:
            break
    under = [p["clients"] for p in points if p["p95_s"] is not None and p["p95_s"] < P95_LIMIT_S]
    return {"points": points, "most_clients_p95_under_1s": max(under, default=0), "seed_article_a10g": 12}


def decode_graphs(service, repeats: int) -> dict[str, Any]:
    """Launched kernels against CUDA graphs for the decoding step, the same model and requests, alternated, best of
    each."""
    from bench.lib.workloads import chinese_texts
    from serve_app.engine import SamplingParams, Seq2SeqEngine
    from serve_app.engine.graphed_step import GraphedDecoder

    captured = service.loaded.device.type == "cuda"
    graphed = Seq2SeqEngine(service.loaded.model, service.engine.max_input_tokens)
    graphed.decoder = GraphedDecoder(graphed.decoder, capture=captured)
    engines = {"eager": service.engine, "graphs": graphed}
    works = {
        "alone": service.text_tasks.augment_requests(
            ["这家餐厅的服务态度很好,上菜速度也快"], SamplingParams(num_return_sequences=3, max_new_tokens=64, seed=1)
        ),
        "rows_32": service.text_tasks.augment_requests(
            chinese_texts(16, seed=3), [SamplingParams(2, 64, seed=200 + i) for i in range(16)]
        ),
    }
    outputs = {
        name: {work: engine.generate(requests) for work, requests in works.items()} for name, engine in engines.items()
    }  # warm-up, captures
    best: dict[str, dict[str, float]] = {name: {} for name in engines}
    for _ in range(repeats):
        for work, requests in works.items():
            for name, engine in engines.items():
                seconds = _timed(service, functools.partial(engine.generate, requests))
                best[name][work] = min(seconds, best[name].get(work, float("inf")))
    tokens = {work: sum(len(sequence) for answer in outputs["eager"][work] for sequence in answer) for work in works}
    same = sum(a == b for work in works for a, b in zip(outputs["eager"][work], outputs["graphs"][work], strict=True))
    return {
        "captured": captured,
        "graphs_captured": graphed.decoder.captured,
        "alone_ms": {name: best[name]["alone"] * 1000 for name in engines},
        "rows_32_tokens_per_s": {name: tokens["rows_32"] / best[name]["rows_32"] for name in engines},
        "x_eager": {work: best["eager"][work] / best["graphs"][work] for work in works},
        "identical_requests": same,
        "requests": sum(len(requests) for requests in works.values()),
    }


def _timed(service, call: Callable[[], Any]) -> float:
    _sync(service)
    started = time.perf_counter()
    call()
    _sync(service)
    return time.perf_counter() - started


def seeded_invariance(service) -> dict[str, Any]:
    """Seeded requests alone and inside a batch of 32: the same token ids?"""
    from bench.lib.workloads import chinese_texts
    from serve_app.engine import SamplingParams

    requests = service.text_tasks.augment_requests(
        chinese_texts(32, seed=7), [SamplingParams(2, 32, seed=100 + i) for i in range(32)]
    )
    batched = service.engine.generate(requests)
    alone = [service.engine.generate([request])[0] for request in requests[:8]]
    same = sum(a == b for a, b in zip(alone, batched[: len(alone)], strict=True))
    return {"requests": len(alone), "identical_alone_and_batched": same}


def against_baseline(service, model: str, device: str, quick: bool) -> dict[str, Any]:
    """Augment requests/s: the engine at batch 32 against transformers `generate` one request at a time."""
    from bench.lib.baseline import AugmentBody, Baseline
    from bench.lib.engine_work import augment_work
    from bench.lib.workloads import chinese_texts

    count = 4 if quick else 32
    work = augment_work(service, count, n=2, max_new_tokens=32)
    ours = statistics.median(_seconds(service, lambda: work.run(work.requests[:count]), 1 if quick else 3))
    baseline = Baseline(model, device, "float32")
    bodies = [AugmentBody(text=text, num_return_sequences=2, max_length=32) for text in chinese_texts(count, seed=1)]
    theirs = statistics.median(_seconds(service, lambda: [baseline.augment(body) for body in bodies], 1))
    return {
        "requests": count,
        "engine_requests_per_s": count / ours,
        "baseline_requests_per_s": count / theirs,
        "x_baseline": theirs / ours,
    }


def fidelity(model: str, device: str, count: int) -> dict[str, Any]:
    from bench.lib.engine_work import pipeline
    from bench.lib.probabilities import classify_inputs, compare

    inputs = classify_inputs(count)
    probabilities = {}
    for dtype in ("float32", "bfloat16"):
        service = pipeline(model, device, dtype)
        requests = [
            service.text_tasks.classify_requests(service.text_tasks.classify_jobs([text], labels))[0]
            for text, labels in inputs
        ]
        probabilities[dtype] = [r.probabilities for r in service.engine.score(requests)]
    return {"inputs": count, "bfloat16_vs_float32": compare(probabilities["float32"], probabilities["bfloat16"])}


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"Device `{out['device']}` (CUDA {out['cuda']}), model "
        f"`{out['model']}`{' (quick: not results)' if out['quick'] else ''}.",
        "",
    ]
    for name, part in out["parts"].items():
        if "error" in part:
            lines.append(f"- {name}: failed after {part['seconds']:.0f} s: {part['error'].strip().splitlines()[-1]}")
            continue
        value = part["result"]
        text = {
            "augment_latency": lambda v: (
                f"one /augment (3 x 64 tokens) alone: median **{v['median_s'] * 1000:.0f} ms** (the seed article: 380 "
                "ms on an A10G)"
            ),
            "memory": lambda v: (
                v.get("skipped")
                or (
                    f"16 rows x 64 tokens: peak **{v['peak_gib']:.2f} GiB** of which weights {v['weights_gib']:.2f} "
                    "GiB "
                    "(the seed: 14.2 GB)"
                )
            ),
            "decode_graphs": lambda v: (
                "decoding step as CUDA "
                f"graphs{'' if v['captured'] else ' (not captured: the fixed-shape step on a CPU)'}: "
                f"one /augment alone {v['alone_ms']['graphs']:.0f} vs {v['alone_ms']['eager']:.0f} ms "
                f"(**{v['x_eager']['alone']:.2f}x**), "
                f"32 rows {v['rows_32_tokens_per_s']['graphs']:.0f} vs {v['rows_32_tokens_per_s']['eager']:.0f} "
                f"tokens/s ({v['x_eager']['rows_32']:.2f}x); "
                f"{v['identical_requests']} of {v['requests']} seeded requests identical; {v['graphs_captured']} "
                "graphs captured"
            ),
            "classify_batch": lambda v: f"classification at batch 64: {v['texts_per_s']:.0f} texts/s",
            "classify_clients": lambda v: (
                "most /classify clients at p95 < 1 s through the scheduler lanes: "
                f"**{v['most_clients_p95_under_1s']}** (the seed: 12 on an A10G)"
            ),
            "seeded_invariance": lambda v: (
                f"seeded sampling: {v['identical_alone_and_batched']} of {v['requests']} requests identical alone and "
                "in a batch of 32"
            ),
            "against_baseline": lambda v: (
                f"augment at batch {v['requests']}: {v['x_baseline']:.1f}x transformers `generate` one at a time "
                f"({v['engine_requests_per_s']:.1f} vs {v['baseline_requests_per_s']:.2f} req/s)"
            ),
            "fidelity": lambda v: (
                f"bfloat16 against float32 on {v['inputs']} inputs: max |Δp| "
                f"{v['bfloat16_vs_float32']['max_abs_dp']:.4f}, "
                f"top label agrees {v['bfloat16_vs_float32']['top_label_agreement']:.0%}"
            ),
        }[name](value)
        lines.append(f"- {text} ({part['seconds']:.0f} s)")
    return "\n".join(lines) + "\n"
