"""Engine-level micro-benchmark of the performance levers: no HTTP, Seq2SeqEngine directly, the same
batched code the ModelReplica runs.

    .venv/bin/python -m bench.levers                         # every lever, CPU, the bench checkpoint
    .venv/bin/python -m bench.levers --levers dtype packed   # some of them
    .venv/bin/python -m bench.levers --device cuda --gpu     # on a GPU box: the GPU figures of issue 5

Variants of one lever run interleaved (A B A B ...) and each keeps its fastest repeat, so
another process stealing the CPU for a while hurts both sides alike. Results go to
bench/results/levers.json and the levers section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench.workloads import LABELS, chinese_texts
from serve_app.engine import GenerationRequest, SamplingParams, ScoringRequest, Seq2SeqEngine, load_model
from serve_app.engine.loading import LoadedModel
from serve_app.text.tokenization import PromptEncoder
from serve_app.text.prompts import AUGMENT_TEMPLATE, CLASSIFICATION_TEMPLATE, Template

ROOT = Path(__file__).resolve().parents[1]
ALL_LEVERS = ["ceiling", "dtype", "vocab", "packed", "buckets", "fanout", "inference_mode", "attention", "batch", "threads", "int8"]


def log(message: str) -> None:
    print(f"[levers {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- inputs
def classify_requests(loaded: LoadedModel, count: int, labels: list[str] | None = None, seed: int = 0) -> list[ScoringRequest]:
    """The bench's classify workload as the Classifier deployment hands it to the engine."""
    from serve_app import classification

    encoder = PromptEncoder(loaded.tokenizer)
    template = Template(CLASSIFICATION_TEMPLATE)
    jobs = [classification.prepare_job(encoder, template, text, list(labels or LABELS)) for text in chinese_texts(count, seed)]
    return [classification.scoring_request(job) for job in jobs]


def augment_requests(loaded: LoadedModel, count: int, n: int = 2, new_tokens: int = 32, seed: int = 1) -> list[GenerationRequest]:
    encoder = PromptEncoder(loaded.tokenizer)
    template = Template(AUGMENT_TEMPLATE)
    params = SamplingParams(num_return_sequences=n, max_new_tokens=new_tokens, temperature=1.0, top_k=50, top_p=0.95)
    return [GenerationRequest(encoder.encode(template, {"text": text}).input_ids, params) for text in chinese_texts(count, seed)]


def greedy_label_requests(requests: list[ScoringRequest]) -> list[GenerationRequest]:
    """Classification by free generation: greedy, as many steps as the longest label + </s>."""
    return [
        GenerationRequest(r.input_ids, SamplingParams(num_return_sequences=1, max_new_tokens=max(map(len, r.label_ids)) + 1, temperature=0.0, top_k=0, top_p=1.0))
        for r in requests
    ]


# ---------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(variants: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: bool = True) -> dict[str, dict[str, float]]:
    """Seconds per call of each variant: interleaved repeats, best and median kept."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    if warmup:
        for fn in variants.values():
            fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            started = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - started)
    return {name: {"best_s": min(values), "median_s": statistics.median(values), "runs": len(values)} for name, values in times.items()}


def rate(result: dict[str, dict[str, float]], items: int, unit: str) -> dict[str, dict[str, float]]:
    for figures in result.values():
        figures[unit] = items / figures["best_s"]
    return result


@contextlib.contextmanager
def engine_knobs(engine: Seq2SeqEngine, **knobs: Any) -> Iterator[None]:
    saved = {name: getattr(engine, name) for name in knobs}
    for name, value in knobs.items():
        setattr(engine, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(engine, name, value)


def with_knobs(engine: Seq2SeqEngine, fn: Callable[[], Any], **knobs: Any) -> Callable[[], Any]:
    def run() -> Any:
        with engine_knobs(engine, **knobs):
            return fn()

    return run


# ---------------------------------------------------------------- levers
class Levers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loaded = load_model(args.model, args.device, args.dtype)
        self.device = self.loaded.device
        self.engine = Seq2SeqEngine(self.loaded.model)
        self.score_batch = classify_requests(self.loaded, args.score_batch)
        self.gen_batch = augment_requests(self.loaded, args.gen_batch, n=2, new_tokens=args.new_tokens)
        self.repeats = args.repeats

    # Each lever returns {"question", "variants": {name: figures}, "kept", "note"}.
    def ceiling(self) -> dict[str, Any]:
        """The baseline's own calls (bench/baseline_server.py, one request at a time) vs the engine's 32-request
        batches, in one process, interleaved: the throughput ratio the service could reach with HTTP and Serve free."""
        from bench.baseline import AugmentBody, Baseline, ClassifyBody

        baseline = Baseline(self.args.model, loaded=self.loaded)
        texts = chinese_texts(32, seed=7)
        classify_bodies = [ClassifyBody(text=text, labels=LABELS) for text in texts]
        augment_bodies = [AugmentBody(text=text, num_return_sequences=2, max_length=32) for text in texts]
        scoring = classify_requests(self.loaded, 32, seed=7)
        generating = augment_requests(self.loaded, 32, n=2, new_tokens=32, seed=7)
        few = self.args.ceiling_sequential

        def one_at_a_time(handler, bodies) -> Callable[[], Any]:
            return lambda: [handler(body) for body in bodies[:few]]

        classify = compare(
            {"baseline: transformers generate, 1 at a time": one_at_a_time(baseline.classify, classify_bodies), "engine.score, batch 32": lambda: self.engine.score(scoring)},
            max(1, self.repeats - 1),
            self.device,
        )
        augment = compare(
            {"baseline: transformers generate, 1 at a time": one_at_a_time(baseline.augment, augment_bodies), "engine.generate, batch 32": lambda: self.engine.generate(generating)},
            1,
            self.device,
        )
        variants = {
            "classify, baseline (1 at a time)": {"requests_per_s": few / classify["baseline: transformers generate, 1 at a time"]["best_s"]},
            "classify, engine batch 32": {"requests_per_s": 32 / classify["engine.score, batch 32"]["best_s"]},
            "augment n=2 x 32 tokens, baseline (1 at a time)": {"requests_per_s": few / augment["baseline: transformers generate, 1 at a time"]["best_s"]},
            "augment n=2 x 32 tokens, engine batch 32": {"requests_per_s": 32 / augment["engine.generate, batch 32"]["best_s"]},
        }
        for kind in ("classify", "augment"):
            ours = next(v for k, v in variants.items() if k.startswith(kind) and "engine" in k)
            theirs = next(v for k, v in variants.items() if k.startswith(kind) and "baseline" in k)
            ours["x_baseline"] = ours["requests_per_s"] / theirs["requests_per_s"]
        return {
            "question": "ceiling: the baseline's calls vs the engine's 32-request batches, same process, no HTTP (32 clients' worth of work)",
            "variants": variants,
            "kept": "-",
            "note": f"The baseline side times {few} sequential requests per repeat; classify generation is capped at the longest label + 1 tokens, as in the baseline server.",
        }

    def dtype(self) -> dict[str, Any]:
        """bf16 vs fp32 (AMX, where the CPU exposes it, makes bf16 matmuls fast; without it they are emulated)."""
        other = "bfloat16" if self.loaded.dtype == torch.float32 else "float32"
        loaded_other = load_model(self.args.model, self.args.device, other)
        engine_other = Seq2SeqEngine(loaded_other.model)
        names = {str(self.loaded.dtype).removeprefix("torch."): self.engine, other: engine_other}
        score = rate(compare({name: (lambda e=e: e.score(self.score_batch)) for name, e in names.items()}, self.repeats, self.device), len(self.score_batch), "requests_per_s")
        gen = rate(compare({name: (lambda e=e: e.generate(self.gen_batch)) for name, e in names.items()}, max(1, self.repeats - 1), self.device), len(self.gen_batch), "requests_per_s")
        one = [self.gen_batch[0]]
        single = compare({name: (lambda e=e: e.generate(one)) for name, e in names.items()}, self.repeats, self.device)
        variants = {}
        for name in names:
            variants[name] = {
                f"classify batch {len(self.score_batch)} req/s": score[name]["requests_per_s"],
                f"augment batch {len(self.gen_batch)} req/s": gen[name]["requests_per_s"],
                "augment 1 request s": single[name]["best_s"],
            }
        del engine_other, loaded_other
        kept = max(names, key=lambda name: variants[name][f"classify batch {len(self.score_batch)} req/s"])
        return {"question": "bf16 vs fp32 weights and activations", "variants": variants, "kept": kept}

    def vocab(self) -> dict[str, Any]:
        """Full-vocabulary scoring (the default) vs label-token normalisation, and vs free generation."""
        engine = self.engine
        batch = self.score_batch
        label_tokens = [dataclasses.replace(request, normalization="label_tokens") for request in batch]
        generate = greedy_label_requests(batch)
        result = rate(
            compare(
                {
                    "full vocabulary (default)": lambda: engine.score(batch),
                    "label tokens only (scoring: label_tokens)": lambda: engine.score(label_tokens),
                    "free generation (greedy, label length + 1 steps)": lambda: engine.generate(generate),
                },
                self.repeats,
                self.device,
            ),
            len(batch),
            "requests_per_s",
        )
        return {"question": f"classify {len(batch)} requests x {len(LABELS)} labels: normalised over the full vocabulary vs the label tokens", "variants": result, "kept": "full vocabulary (default)"}

    def packed(self) -> dict[str, Any]:
        result = rate(
            compare(
                {
                    "packed: one decoder row per input": with_knobs(self.engine, lambda: self.engine.score(self.score_batch), packed_scoring=True),
                    "one decoder row per label (encoder state fanned out)": with_knobs(self.engine, lambda: self.engine.score(self.score_batch), packed_scoring=False),
                },
                self.repeats,
                self.device,
            ),
            len(self.score_batch),
            "requests_per_s",
        )
        return {"question": f"classify {len(self.score_batch)} requests: labels packed into one decoder sequence vs one row per label", "variants": result, "kept": _best(result)}

    def buckets(self) -> dict[str, Any]:
        variants: dict[str, Callable[[], Any]] = {}
        for overhead in (None, 32, 64, 128):
            name = "one padded batch" if overhead is None else f"length buckets (overhead {overhead} tokens)"
            variants[name] = with_knobs(self.engine, lambda: self.engine.score(self.score_batch), bucket_overhead_tokens=overhead)
        result = rate(compare(variants, self.repeats, self.device), len(self.score_batch), "requests_per_s")
        lengths = [len(r.input_ids) for r in self.score_batch]
        return {
            "question": f"classify {len(self.score_batch)} prompts of {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}): encoder on one padded batch vs length buckets",
            "variants": result,
            "kept": _best(result),
        }

    def fanout(self) -> dict[str, Any]:
        batch = self.gen_batch
        copies = [GenerationRequest(r.input_ids, SamplingParams(**{**r.params.__dict__, "num_return_sequences": 1})) for r in batch for _ in range(r.params.num_return_sequences)]
        result = rate(
            compare(
                {
                    "encoder once per input, rows fanned out": lambda: self.engine.generate(batch),
                    "one request per returned sequence": lambda: self.engine.generate(copies),
                },
                max(1, self.repeats - 1),
                self.device,
            ),
            len(batch),
            "requests_per_s",
        )
        return {"question": f"augment {len(batch)} requests x 2 sequences x {self.args.new_tokens} tokens: encoder once per input vs per sequence", "variants": result, "kept": _best(result)}

    def inference_mode(self) -> dict[str, Any]:
        score = Seq2SeqEngine.score.__wrapped__  # the undecorated method

        def no_grad() -> Any:
            with torch.no_grad():
                return score(self.engine, self.score_batch)

        result = rate(
            compare({"torch.inference_mode": lambda: self.engine.score(self.score_batch), "torch.no_grad": no_grad}, self.repeats, self.device),
            len(self.score_batch),
            "requests_per_s",
        )
        return {"question": "classify batch under inference_mode vs no_grad", "variants": result, "kept": "torch.inference_mode"}

    def attention(self) -> dict[str, Any]:
        model = self.loaded.model

        def under(implementation: str, fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                model.set_attn_implementation(implementation)
                try:
                    return fn()
                finally:
                    model.set_attn_implementation("sdpa")

            return run

        variants = {}
        for implementation in ("sdpa", "eager"):
            variants[f"{implementation}: classify"] = under(implementation, lambda: self.engine.score(self.score_batch))
        result = rate(compare(variants, self.repeats, self.device), len(self.score_batch), "requests_per_s")
        gen = {f"{impl}: augment": under(impl, lambda: self.engine.generate(self.gen_batch)) for impl in ("sdpa", "eager")}
        result.update(rate(compare(gen, max(1, self.repeats - 1), self.device), len(self.gen_batch), "requests_per_s"))
        total = {impl: result[f"{impl}: classify"]["best_s"] + result[f"{impl}: augment"]["best_s"] for impl in ("sdpa", "eager")}
        kept = min(total, key=total.get)
        return {"question": "attention implementation (T5's position bias rides in the SDPA mask)", "variants": result, "kept": kept}

    def batch(self) -> dict[str, Any]:
        """Throughput against batch size: where it stops growing is the useful max_batch_size."""
        variants: dict[str, dict[str, float]] = {}
        for size in self.args.batch_sizes:
            score = classify_requests(self.loaded, size, seed=3)
            figures = compare({"score": lambda: self.engine.score(score)}, self.repeats, self.device)["score"]
            variants[f"classify batch {size}"] = {**figures, "requests_per_s": size / figures["best_s"]}
        for size in self.args.batch_sizes:
            gen = augment_requests(self.loaded, max(1, size // 2), n=2, new_tokens=self.args.new_tokens, seed=4)
            figures = compare({"gen": lambda: self.engine.generate(gen)}, max(1, self.repeats - 1), self.device)["gen"]
            variants[f"augment {len(gen)} requests = {2 * len(gen)} rows"] = {**figures, "requests_per_s": len(gen) / figures["best_s"], "rows_per_s": 2 * len(gen) / figures["best_s"]}
        return {"question": "engine throughput against batch size (the batch window's max_batch_size)", "variants": variants, "kept": "see numbers"}

    def threads(self) -> dict[str, Any]:
        """One process with all cores vs one process per core (each with its own weights), same total work."""
        cores = os.cpu_count() or 1
        layouts = [(1, cores)] + ([(cores, 1)] if cores > 1 else [])
        variants = {}
        for processes, threads in layouts:
            for kind in ("score", "generate"):
                per_process = self.args.score_batch if kind == "score" else self.args.gen_batch
                seconds = _run_processes(self.args, processes, threads, kind, per_process // processes, self.args.new_tokens)
                requests = (per_process // processes) * processes
                variants[f"{processes} process(es) x {threads} thread(s): {kind}"] = {"wall_s": seconds, "requests_per_s": requests / seconds}
        kept = "; ".join(
            f"{kind}: {_best_rate({k: v for k, v in variants.items() if k.endswith(kind)}).split(':')[0]}" for kind in ("score", "generate")
        )
        return {"question": f"{cores} cores: torch threads per replica vs replicas per node (same requests in total)", "variants": variants, "kept": kept}

    def int8(self) -> dict[str, Any]:
        """Dynamic int8 quantization of every Linear (VNNI on this CPU). Changes the numbers: not a drop-in."""
        from torch.ao.quantization import quantize_dynamic

        loaded = load_model(self.args.model, "cpu", "float32")
        model = loaded.model
        head = model.lm_head  # engine.score multiplies lm_head.weight rows directly: keep the head in fp32
        model.lm_head = torch.nn.Identity()
        quantized = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        quantized.lm_head = head
        engine = Seq2SeqEngine(quantized)
        result = rate(compare({"fp32": lambda: self.engine.score(self.score_batch), "int8 dynamic": lambda: engine.score(self.score_batch)}, self.repeats, self.device), len(self.score_batch), "requests_per_s")
        reference = self.engine.score(self.score_batch[:8])
        approx = engine.score(self.score_batch[:8])
        drift = max(abs(a - b) for x, y in zip(reference, approx) for a, b in zip(x.probabilities, y.probabilities))
        return {"question": "int8 dynamic quantization of the Linear layers (classify)", "variants": result, "kept": "fp32", "note": f"max probability change vs fp32 on 8 prompts: {drift:.3f} (random weights; accuracy on the real model unmeasured)"}

    # ------------------------------------------------------------ GPU figures (issue 5, part 4)
    def gpu(self) -> dict[str, Any]:
        device = self.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        one = augment_requests(self.loaded, 1, n=3, new_tokens=64, seed=5)
        latency = compare({"augment 1 request, 3 outputs, 64 new tokens": lambda: self.engine.generate(one)}, self.repeats, device)
        batch = classify_requests(self.loaded, 64, seed=6)
        throughput = rate(compare({"classify batch 64": lambda: self.engine.score(batch)}, self.repeats, device), 64, "requests_per_s")
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
        return {
            "question": f"GPU figures on {name} ({self.loaded.dtype})",
            "variants": {**latency, **throughput},
            "peak_gpu_memory_gib": peak,
            "kept": "-",
        }


def _best(result: dict[str, dict[str, float]]) -> str:
    return min(result, key=lambda name: result[name]["best_s"])


def _best_rate(result: dict[str, dict[str, float]]) -> str:
    return max(result, key=lambda name: result[name]["requests_per_s"])


def _worker(args: dict[str, Any], threads: int, kind: str, count: int, new_tokens: int, ready, go, out) -> None:
    torch.set_num_threads(threads)
    loaded = load_model(args["model"], args["device"], args["dtype"])
    engine = Seq2SeqEngine(loaded.model)
    if kind == "score":
        batch = classify_requests(loaded, count)
        run = lambda: engine.score(batch)  # noqa: E731
    else:
        batch = augment_requests(loaded, count, n=2, new_tokens=new_tokens)
        run = lambda: engine.generate(batch)  # noqa: E731
    run()  # warm
    ready.release()
    go.wait()
    started = time.perf_counter()
    run()
    out.put(time.perf_counter() - started)


def _run_processes(args: argparse.Namespace, processes: int, threads: int, kind: str, count: int, new_tokens: int) -> float:
    """Wall time for `processes` workers, `threads` torch threads each, each running one batch of `count`, started together."""
    context = mp.get_context("spawn")
    ready, go, out = context.Semaphore(0), context.Event(), context.Queue()
    plain = {"model": args.model, "device": args.device, "dtype": args.dtype}
    workers = [context.Process(target=_worker, args=(plain, threads, kind, count, new_tokens, ready, go, out)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.acquire()
    started = time.perf_counter()
    go.set()
    for _ in workers:
        out.get()
    wall = time.perf_counter() - started
    for worker in workers:
        worker.join()
    return wall


# ---------------------------------------------------------------- report
def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{'Levers measured in several runs, the last' if results.get('merged') else 'Run'} of {results['date']} on {results['machine']}.",
        "",
        "Each lever names the command that measured it." if results.get("merged") else f"Command: `{results['command']}`",
        "",
        f"Model: {results['model']} ({results['dtype']} on {results['device']}); classify batch = {results['score_batch']} requests x 6 labels; "
        f"augment batch = {results['gen_batch']} requests x 2 sequences x {results['new_tokens']} new tokens. Best of {results['repeats']} interleaved repeats.",
        "",
    ]
    order = {name: index for index, name in enumerate(ALL_LEVERS + ["gpu"])}
    for name, lever in sorted(results["levers"].items(), key=lambda item: order.get(item[0], 99)):
        load = lever.get("load_average")
        load_text = f" (machine load average {load[0]:g} → {load[1]:g})" if load else ""
        lines += [f"**{name}** — {lever['question']}. Kept: {lever.get('kept', '-')}{load_text}.", ""]
        if lever.get("command") and (results.get("merged") or lever["command"] != results["command"]):
            lines += [f"(measured {lever.get('date', '')} by `{lever['command']}`)", ""]
        if lever.get("error"):
            lines += [f"failed: {lever['error']}", ""]
            continue
        columns: list[str] = []
        for figures in lever["variants"].values():
            for key in figures:
                if key not in ("runs", "median_s") and key not in columns:
                    columns.append(key)
        lines.append("| variant | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for variant, figures in lever["variants"].items():
            cells = [f"{figures[c]:.3g}" if isinstance(figures.get(c), (int, float)) else "" for c in columns]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        if lever.get("note"):
            lines += ["", lever["note"]]
        if lever.get("peak_gpu_memory_gib") is not None:
            lines += ["", f"Peak GPU memory (torch.cuda.max_memory_allocated): {lever['peak_gpu_memory_gib']:.2f} GiB"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Engine-level micro-benchmark of the performance levers.")
    parser.add_argument("--model", default=None, help="model spec (default: the bench's mT5-base-shaped random checkpoint)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="auto", help="auto: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--levers", nargs="+", default=None, choices=ALL_LEVERS + ["gpu"], help="default: all CPU levers (gpu figures with --gpu)")
    parser.add_argument("--gpu", action="store_true", help="only the GPU figures of issue 5 (augment latency, classify batch 64, peak memory)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--score-batch", type=int, default=32)
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 32, 64])
    parser.add_argument("--ceiling-sequential", type=int, default=6, help="baseline requests timed one after another in the ceiling lever")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "levers.json")
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-md", action="store_true")
    parser.add_argument("--merge", action="store_true", help="keep the other levers already in --out; replace only those run now")
    args = parser.parse_args(argv)
    command = ".venv/bin/python -m bench.levers" + (" " + shlex.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else "")
    if args.model is None:
        from bench.checkpoint import build_checkpoint

        args.model = str(build_checkpoint(log=log))
    if args.gpu and args.out == ROOT / "bench" / "results" / "levers.json":
        args.out = args.out.with_name("levers-gpu.json")
    chosen = ["gpu"] if args.gpu else (args.levers or [lever for lever in ALL_LEVERS if not (lever == "int8" and args.device != "cpu")])

    from bench.run import machine_description

    bench = Levers(args)
    results: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description()["description"],
        "command": command,
        "model": args.model,
        "device": str(bench.device),
        "dtype": str(bench.loaded.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "score_batch": args.score_batch,
        "gen_batch": args.gen_batch,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "levers": {},
    }
    for lever in chosen:
        log(f"{lever} ...")
        started = time.monotonic()
        load_before = os.getloadavg()[0]
        try:
            results["levers"][lever] = getattr(bench, lever)()
        except Exception as exc:  # one broken lever must not lose the others' numbers
            results["levers"][lever] = {"question": lever, "variants": {}, "error": f"{type(exc).__name__}: {exc}"}
        results["levers"][lever]["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        results["levers"][lever]["seconds"] = round(time.monotonic() - started, 1)
        results["levers"][lever]["command"] = command
        results["levers"][lever]["date"] = results["date"]
        log(f"{lever} done in {time.monotonic() - started:.0f} s: {json.dumps(results['levers'][lever], default=str)[:600]}")
    if args.merge and args.out.exists():
        previous = json.loads(args.out.read_text())
        results["levers"] = {**previous.get("levers", {}), **results["levers"]}
        results["merged"] = True
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    log(f"wrote {args.out}")
    if not args.no_md:
        from bench.report import update_section

        section = "levers-gpu" if args.gpu else "levers"
        update_section(args.md, section, markdown(results), "GPU figures (bench.levers --gpu)" if args.gpu else "Levers (bench.levers)")
        log(f"updated {args.md}")
    return results


if __name__ == "__main__":
    main()
