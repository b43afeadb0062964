"""On a GPU machine, without Ray: the engine's latency, memory and batches, the serving core under load, and seeded
invariance.

    bash bench/gpu_wheels.sh                  # here, once: the wheels the GPU machine's Python lacks, into .wheels/
    bash bench/gpu_suite.sh "$OUT"            # there (the device tool, carry [".wheels"]): this command, in one call
    PYTHON=.venv/bin/python bash bench/gpu_suite.sh /tmp/gpu --device cpu --quick   # here: the rehearsal

Ray's wheel is too large to carry to a lent GPU machine, so this measures the engine and the serving core (the
ModelReplica's scheduler lanes) directly, on the mT5-base-shaped checkpoint. gpu_suite.sh first runs
bench/lib/gpu_preflight.py (Python, every import, CUDA: one line in $OUT/preflight.txt, in seconds), then this,
within a wall-clock budget (`--budget-s`, 480 s: a part whose estimate no longer fits is skipped and says so).
The parts, cheapest and most wanted first:

- augment_latency: one /augment of 3 sequences x 64 tokens, alone (target < 60 ms; the seed article: 380 ms on an
  A10G);
- memory: weights plus the decoding cache for 16 rows from 512-token inputs: torch's allocated and reserved peaks
  and the device's free memory before and after (target < 2 GB; the seed: 14.2 GB);
- classify_batch: label scoring at batch 64;
- decode_graphs: the decoding step replayed as CUDA graphs (config.yaml's `decode_graphs`) against launched
  kernels, alone and at 32 rows, alternated, whether the seeded tokens are the same, and the graphs captured
  inside the timed loops (target 0), and what a lane at the GPU profile's rows takes at start-up (graphs captured,
  seconds, GiB of caches); on a CPU rehearsal the fixed-shape step without capture;
- seeded_invariance: seeded sampling alone against inside a batch, in float32 and bfloat16, eager and graphed,
  with the first step where a request's tokens part;
- fidelity: bfloat16 label probabilities against float32;
- against_baseline: the engine at batch 32 against transformers `generate` one request at a time;
- classify_clients: closed-loop /classify clients against the scheduler lanes with the GPU profile's budgets
  (cluster/render.py), raised until p95 reaches 1 s (the seed: 12 clients on an A10G); a sweep that stops before
  (its last step, or the budget) reports ">= N".

The header names the device, the dtype `auto` chose and why, and every library's version. It refuses to run on
`--device cuda` where torch sees no CUDA: CPU figures must never be labelled as a GPU's. Each part is written to
`<out>/gpu.json` as soon as it ends, so a run cut short keeps what it finished.
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
BUDGET_S = 480.0  # the lent machine's ten minutes, less its start, the install and the checkpoint build
# Each part's seconds on an H100 by estimate (the CPU rehearsal takes its own), in the order they run: the cheap
# and most wanted first, the open-ended client sweep last.
ESTIMATE_S = {
    "augment_latency": 10,
    "memory": 15,
    "classify_batch": 10,
    "decode_graphs": 60,
    "seeded_invariance": 40,
    "fidelity": 30,
    "against_baseline": 60,
    "classify_clients": 150,
}
QUICK_SHARE = 0.05  # a --quick rehearsal's share of each estimate
CLIENT_STEPS = [1, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128]


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
    parser.add_argument(
        "--budget-s",
        type=float,
        default=BUDGET_S,
        help=f"wall-clock seconds for the whole run (default {BUDGET_S:.0f}): a part whose estimate no longer fits "
        "is skipped and says so",
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
    deadline = time.monotonic() + args.budget_s
    from bench.lib.checkpoint import model_for_run  # torch: imported when a run starts

    model = model_for_run(args.model, args.quick, log)
    out: dict[str, Any] = {
        **run_header("gpu", getattr(args, "argv", [])),
        "device": args.device,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "versions": _versions(),
        "model": results.relative(model) if model != "demo" else model,
        "quick": args.quick,
        "budget_s": args.budget_s,
        "parts": {},
    }
    for name, run in parts(args, model, deadline).items():
        if name == "precision":
            out.update(run())  # the dtype `auto` chose and why, in the header
            continue
        if args.parts and name not in args.parts:
            continue
        left = deadline - time.monotonic()
        estimate = ESTIMATE_S[name] * (QUICK_SHARE if args.quick else 1)
        if estimate > left:
            out["parts"][name] = {
                "skipped": f"{max(left, 0):.0f} s of the budget left, the part takes ~{estimate:.0f} s"
            }
            log(f"{name} skipped: {out['parts'][name]['skipped']}")
        else:
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


def parts(args: argparse.Namespace, model: str, deadline: float) -> dict[str, Callable[[], Any]]:
    """The parts, in the order they run: the cheapest and most wanted first (ESTIMATE_S)."""
    from bench.lib.engine_work import pipeline

    service = pipeline(model, args.device, args.dtype)
    repeats = 2 if args.quick else 10
    every = {
        "precision": lambda: {"dtype": service.loaded.precision.name, "dtype_reason": service.loaded.precision.reason},
        "augment_latency": lambda: augment_latency(service, repeats),
        "memory": lambda: memory(service),
        "classify_batch": lambda: classify_batch(service, repeats),
        "decode_graphs": lambda: decode_graphs(service, 2 if args.quick else 5),
        "seeded_invariance": lambda: seeded_invariance(model, args.device, 8 if args.quick else 32),
        "fidelity": lambda: fidelity(model, args.device, 8 if args.quick else 64),
        "against_baseline": lambda: against_baseline(service, model, args.device, args.quick),
        "classify_clients": lambda: classify_clients(service, args.quick, deadline),
    }
    assert list(every)[1:] == list(ESTIMATE_S), "ESTIMATE_S names every part, in the order they run"
    return every


def _versions() -> dict[str, str]:
    """Every library the figures depend on."""
    import platform

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "numpy", "pydantic"):
        try:
            versions[name] = str(__import__(name).__version__)
        except ImportError:
            versions[name] = "absent"
    return versions


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
    """Device memory while 16 rows decode 64 tokens from 512-token inputs: torch's allocated and reserved peaks, and
    the device's free memory before and after (which also sees the CUDA context and the caching allocator's
    reserve)."""
    import torch

    from bench.lib.workloads import chinese_texts
    from serve_app.engine import SamplingParams

    if service.loaded.device.type != "cuda":
        return {"skipped": "device memory is measured on CUDA only"}
    long_text = "".join(chinese_texts(64, seed=5))  # well past the input window: truncated to max_input_tokens
    requests = service.text_tasks.augment_requests(
        [long_text] * 8, SamplingParams(num_return_sequences=2, max_new_tokens=64)
    )
    torch.cuda.synchronize()
    free_before, total = torch.cuda.mem_get_info()
    torch.cuda.reset_peak_memory_stats()
    service.engine.generate(requests)
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info()
    weights = sum(p.numel() * p.element_size() for p in service.loaded.model.parameters())
    return {
        "rows": 16,
        "input_tokens": len(requests[0].input_ids),
        "new_tokens": 64,
        "allocated_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "reserved_peak_gib": torch.cuda.max_memory_reserved() / 2**30,
        "device_used_gib": (total - free_after) / 2**30,  # this process with its context (and any other process)
        "free_before_gib": free_before / 2**30,
        "free_after_gib": free_after / 2**30,
        "total_gib": total / 2**30,
        "weights_gib": weights / 2**30,
        "target_gib": 2.0,
        "seed_article_gib": 14.2,
    }


def classify_batch(service, repeats: int) -> dict[str, Any]:
    from bench.lib.engine_work import classify_work

    work = classify_work(service, 64)
    seconds = _seconds(service, lambda: work.run(work.requests[:64]), repeats)
    return {"batch": 64, "texts_per_s": 64 / statistics.median(seconds)}


def classify_clients(service, quick: bool, deadline: float) -> dict[str, Any]:
    """/classify clients against the scheduler lanes with the GPU profile's budgets (cluster/render.py), raised until
    p95 reaches a second, the steps run out (then the answer is a floor: ">= N") or the run's budget does."""
    from bench.lib import scheduler_loop
    from bench.lib.engine_work import classify_work
    from cluster.render import GPU_PROFILE
    from serve_app.scheduling.config import SchedulerConfig

    on_gpu = service.loaded.device.type == "cuda"
    config = SchedulerConfig(**GPU_PROFILE["ModelReplica"]["user_config"]) if on_gpu else SchedulerConfig()
    work = classify_work(service, 256)
    steps = [1, 4] if quick else CLIENT_STEPS
    duration_s, warmup_s = (1.0, 0.3) if quick else (10.0, 3.0)
    points = []
    stopped = "steps ran out"
    for clients in steps:
        if not quick and time.monotonic() + duration_s + warmup_s + 5 > deadline:
            stopped = "the run's budget ran out"
            break
        point = scheduler_loop.measure(service, work, clients, duration_s=duration_s, warmup_s=warmup_s, config=config)
        points.append(point)
        log(f"classify clients {clients}: {point['requests_per_s']:.1f} req/s, p95 {point['p95_s']}")
        if point["p95_s"] is None or point["p95_s"] >= P95_LIMIT_S:
            stopped = "p95 reached a second"
            break
    under = [p["clients"] for p in points if p["p95_s"] is not None and p["p95_s"] < P95_LIMIT_S]
    most = max(under, default=0)
    floor = stopped != "p95 reached a second" and most == (points[-1]["clients"] if points else 0)
    return {
        "points": points,
        "budgets": config.model_dump(),
        "most_clients_p95_under_1s": most,
        "at_least": floor,  # the sweep stopped before p95 reached a second: the answer is ">= most"
        "stopped": stopped,
        "seed_article_a10g": 12,
    }


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
    start_up = _start_up_capture(service, graphed)
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
    captured_before = graphed.decoder.captured
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
        "start_up": start_up,
        "graphs_captured": graphed.decoder.captured,
        "captures_in_timed_loops": graphed.decoder.captured - captured_before,  # target 0: replays only
        "alone_ms": {name: best[name]["alone"] * 1000 for name in engines},
        "rows_32_tokens_per_s": {name: tokens["rows_32"] / best[name]["rows_32"] for name in engines},
        "x_eager": {work: best["eager"][work] / best["graphs"][work] for work in works},
        "identical_requests": same,
        "requests": sum(len(requests) for requests in works.values()),
    }


def _start_up_capture(service, graphed) -> dict[str, Any]:
    """What a ModelReplica with decode_graphs does before its first request, at the GPU profile's rows (on a CPU,
    8): allocate a lane's caches for the longest input and the widest time axis, and capture every bucket."""
    from cluster.render import GPU_PROFILE

    rows = GPU_PROFILE["ModelReplica"]["user_config"]["max_batch_rows"] if graphed.decoder.capture else 8
    before = graphed.decoder.captured
    _sync(service)
    started = time.perf_counter()
    batch = graphed.new_batch(capacity=rows, row_limit=rows)
    _sync(service)
    seconds = time.perf_counter() - started
    cache = sum(buffer.numel() * buffer.element_size() for buffer in (batch.self_kv, batch.cross_kv))
    return {"rows": rows, "graphs": graphed.decoder.captured - before, "seconds": seconds, "cache_gib": cache / 2**30}


def _timed(service, call: Callable[[], Any]) -> float:
    _sync(service)
    started = time.perf_counter()
    call()
    _sync(service)
    return time.perf_counter() - started


def seeded_invariance(model: str, device: str, count: int) -> dict[str, Any]:
    """Seeded requests alone and inside a batch of `count`, in float32 and bfloat16, with the step launched and
    replayed as graphs (on a CPU: the fixed-shape step): how many are the same token ids, and the first step
    where a request's tokens part."""
    from bench.lib.engine_work import pipeline
    from bench.lib.workloads import chinese_texts
    from serve_app.engine import SamplingParams, Seq2SeqEngine
    from serve_app.engine.graphed_step import GraphedDecoder

    found: dict[str, Any] = {}
    for dtype in ("float32", "bfloat16"):
        service = pipeline(model, device, dtype)
        graphed = Seq2SeqEngine(service.loaded.model, service.engine.max_input_tokens)
        graphed.decoder = GraphedDecoder(graphed.decoder, capture=service.loaded.device.type == "cuda")
        requests = service.text_tasks.augment_requests(
            chinese_texts(count, seed=7), [SamplingParams(2, 32, seed=100 + i) for i in range(count)]
        )
        for step_kind, engine in (("eager", service.engine), ("graphs", graphed)):
            batched = engine.generate(requests)
            alone = [engine.generate([request])[0] for request in requests[:8]]
            parted = [_first_difference(a, b) for a, b in zip(alone, batched[: len(alone)], strict=True) if a != b]
            found[f"{dtype} {step_kind}"] = {
                "requests": len(alone),
                "identical_alone_and_batched": len(alone) - len(parted),
                "first_step_parted": min(parted, default=None),
            }
    return found


def _first_difference(alone: list[list[int]], batched: list[list[int]]) -> int:
    """The first decoding step (token index) where any of a request's sequences differ."""
    steps = []
    for a, b in zip(alone, batched, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        if a != b:
            steps.append(same)
    return min(steps)


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
    versions = ", ".join(f"{name} {version}" for name, version in out.get("versions", {}).items())
    lines = [
        f"Device `{out['device']}`{' (' + out['gpu'] + ')' if out.get('gpu') else ''} (CUDA {out['cuda']}), model "
        f"`{out['model']}`{' (quick: not results)' if out['quick'] else ''}; dtype {out.get('dtype', '?')} "
        f"({out.get('dtype_reason', '?')}); {versions}.",
        "",
    ]
    for name, part in out["parts"].items():
        if "skipped" in part:
            lines.append(f"- {name}: skipped ({part['skipped']})")
            continue
        if "error" in part:
            lines.append(f"- {name}: failed after {part['seconds']:.0f} s: {part['error'].strip().splitlines()[-1]}")
            continue
        lines.append(f"- {PART_TEXT[name](part['result'])} ({part['seconds']:.0f} s)")
    return "\n".join(lines) + "\n"


def _memory_text(v: dict[str, Any]) -> str:
    if "skipped" in v:
        return str(v["skipped"])
    return (
        f"16 rows x 64 tokens from {v['input_tokens']}-token inputs: allocated peak **{v['allocated_peak_gib']:.2f} "
        f"GiB** (weights {v['weights_gib']:.2f}), reserved peak {v['reserved_peak_gib']:.2f} GiB, the device's used "
        f"memory {v['device_used_gib']:.2f} GiB with the CUDA context (target < 2 GB; the seed: 14.2 GB)"
    )


def _seeded_text(v: dict[str, Any]) -> str:
    return "seeded sampling alone against inside a batch: " + "; ".join(
        f"{kind} {got['identical_alone_and_batched']} of {got['requests']} identical"
        + (f" (first parted at step {got['first_step_parted']})" if got["first_step_parted"] is not None else "")
        for kind, got in v.items()
    )


PART_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "augment_latency": lambda v: (
        f"one /augment (3 x 64 tokens) alone: median **{v['median_s'] * 1000:.0f} ms** (target < 60 ms; the seed "
        "article: 380 ms on an A10G)"
    ),
    "memory": _memory_text,
    "decode_graphs": lambda v: (
        "decoding step as CUDA "
        f"graphs{'' if v['captured'] else ' (not captured: the fixed-shape step on a CPU)'}: "
        f"one /augment alone {v['alone_ms']['graphs']:.0f} vs {v['alone_ms']['eager']:.0f} ms "
        f"(**{v['x_eager']['alone']:.2f}x**), "
        f"32 rows {v['rows_32_tokens_per_s']['graphs']:.0f} vs {v['rows_32_tokens_per_s']['eager']:.0f} "
        f"tokens/s ({v['x_eager']['rows_32']:.2f}x; target >= 1.5x); "
        f"{v['identical_requests']} of {v['requests']} seeded requests identical; {v['graphs_captured']} "
        f"graphs captured, {v['captures_in_timed_loops']} of them inside the timed loops (target 0); start-up of a "
        f"{v['start_up']['rows']}-row lane: {v['start_up']['graphs']} graphs and {v['start_up']['cache_gib']:.1f} GiB "
        f"of caches in {v['start_up']['seconds']:.1f} s"
    ),
    "classify_batch": lambda v: f"classification at batch 64: {v['texts_per_s']:.0f} texts/s",
    "classify_clients": lambda v: (
        "most /classify clients at p95 < 1 s through the scheduler lanes "
        f"(max_batch_rows {v['budgets']['max_batch_rows']}, max_prefill_tokens {v['budgets']['max_prefill_tokens']}): "
        f"**{'>= ' if v['at_least'] else ''}{v['most_clients_p95_under_1s']}** ({v['stopped']}; target >= 12, the "
        "seed: 12 on an A10G)"
    ),
    "seeded_invariance": _seeded_text,
    "against_baseline": lambda v: (
        f"augment at batch {v['requests']}: {v['x_baseline']:.1f}x transformers `generate` one at a time "
        f"({v['engine_requests_per_s']:.1f} vs {v['baseline_requests_per_s']:.2f} req/s)"
    ),
    "fidelity": lambda v: (
        f"bfloat16 against float32 on {v['inputs']} inputs: max |Δp| "
        f"{v['bfloat16_vs_float32']['max_abs_dp']:.4f}, "
        f"top label agrees {v['bfloat16_vs_float32']['top_label_agreement']:.0%}"
    ),
}
