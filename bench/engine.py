"""The engine alone, without Ray or HTTP: each number format, what `dtype: auto` picks, and what checked augmentation costs.

    .venv/bin/python -m bench engine                      # the benchmark checkpoint, float32 / bfloat16 / int8
    .venv/bin/python -m bench engine --formats float32 bfloat16 --parts formats
    .venv/bin/python -m bench engine --quick              # a minute on the demo model (not results; the page is left alone)

Every format runs the same work, built by the service's own text layer: classification of
32 Chinese texts against 4 labels (texts/s), and generation of 32 rows and of 1 row, 64 new
tokens each (tokens/s). The formats are timed in alternation, round after round, so the
machine's drift hits all alike; each keeps its best round. Classification probabilities of
each format are compared with float32's on the same texts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.lib import results
from bench.lib.engine_work import augment_work, classify_work, pipeline
from bench.lib.machine import log as _log
from bench.lib.machine import run_header
from bench.lib.probabilities import compare
from bench.lib.workloads import LABELS

CLASSIFY_TEXTS = 32
CLASSIFY_LABELS = LABELS[:4]
GENERATION_ROWS = 32
GENERATION_TOKENS = 64


def log(message: str) -> None:
    _log("engine", message)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model spec (default: the mT5-base-shaped benchmark checkpoint; demo with --quick)")
    parser.add_argument("--formats", nargs="+", default=["float32", "bfloat16", "int8"], help="number formats to time (dtype values)")
    parser.add_argument("--parts", nargs="+", default=["formats", "auto", "keep_label"], choices=["formats", "auto", "keep_label"])
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds per format (each keeps its best)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--quick", action="store_true", help="the demo model, one round: a smoke run, not results")
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import os

    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model = args.model or ("demo" if args.quick else _bench_checkpoint())
    rounds = 1 if args.quick else args.rounds
    out: dict[str, Any] = {**run_header("engine", getattr(args, "argv", [])), "model": results.relative(model) if model != "demo" else model,
                           "threads": torch.get_num_threads(), "parts": {}}
    if "formats" in args.parts:
        out["parts"]["formats"] = formats(model, args.formats, rounds)
    if "auto" in args.parts:
        out["parts"]["auto"] = auto_choice(model)
    if "keep_label" in args.parts:
        out["parts"]["keep_label"] = keep_label_cost(model, rounds)
    section = markdown(out)
    path = results.save("engine-quick" if args.quick else "engine", out, section, out_dir=args.out, page=None if args.quick else results.PAGE)
    log(f"wrote {results.relative(path)}")
    print(section)
    return out


def _bench_checkpoint() -> str:
    from bench.lib.checkpoint import build_checkpoint

    return str(build_checkpoint(log=log))


def _timed(run, requests) -> float:
    started = time.perf_counter()
    run(requests)
    return time.perf_counter() - started


def formats(model: str, names: list[str], rounds: int) -> dict[str, Any]:
    """Per format: classify texts/s, generation tokens/s at 32 rows and at 1, and probabilities against float32."""
    services = {}
    for name in dict.fromkeys(["float32", *names]):
        log(f"loading {model} as {name} ...")
        services[name] = pipeline(model, "cpu", name)
    work = {}
    for name, service in services.items():
        classify = classify_work(service, CLASSIFY_TEXTS, CLASSIFY_LABELS, seed=3)
        generation = augment_work(service, GENERATION_ROWS, n=1, max_new_tokens=GENERATION_TOKENS, seed=4, seeded=True)
        work[name] = (classify, generation)
        classify.run(classify.requests[:2]), generation.run(generation.requests[:1])  # first-call allocations
    best: dict[str, dict[str, float]] = {name: {"classify_s": float("inf"), "generate32_s": float("inf"), "generate1_s": float("inf")} for name in services}
    tokens: dict[str, dict[str, int]] = {}
    for round_ in range(rounds):
        for name, (classify, generation) in work.items():
            seconds = best[name]
            seconds["classify_s"] = min(seconds["classify_s"], _timed(classify.run, classify.requests))
            started = time.perf_counter()
            batch = generation.run(generation.requests)
            seconds["generate32_s"] = min(seconds["generate32_s"], time.perf_counter() - started)
            started = time.perf_counter()
            lone = generation.run(generation.requests[:1])
            seconds["generate1_s"] = min(seconds["generate1_s"], time.perf_counter() - started)
            tokens[name] = {"batch": sum(len(seq) for out in batch for seq in out), "lone": sum(len(seq) for seq in lone[0])}
            log(f"round {round_ + 1}: {name}: classify {seconds['classify_s']:.2f} s, generate 32 rows {seconds['generate32_s']:.2f} s")
    reference = [r.probabilities for r in services["float32"].engine.score(work["float32"][0].requests)]
    figures: dict[str, Any] = {}
    for name, (classify, _) in work.items():
        probabilities = [r.probabilities for r in services[name].engine.score(classify.requests)]
        seconds = best[name]
        figures[name] = {
            "dtype_reason": classify.dtype_reason,
            "classify_texts_per_s": CLASSIFY_TEXTS / seconds["classify_s"],
            "generate32_tokens_per_s": tokens[name]["batch"] / seconds["generate32_s"],
            "generate1_tokens_per_s": tokens[name]["lone"] / seconds["generate1_s"],
            **compare(reference, probabilities),
        }
    return {"classify": f"{CLASSIFY_TEXTS} texts x {len(CLASSIFY_LABELS)} labels", "generation": f"{GENERATION_ROWS} rows and 1 row x {GENERATION_TOKENS} new tokens",
            "rounds": rounds, "formats": figures}


def auto_choice(model: str) -> dict[str, Any]:
    """What `dtype: auto` runs on this machine, and why (as /healthz says it)."""
    service = pipeline(model, "auto", "auto")
    return {"device": str(service.loaded.device), "dtype": service.loaded.precision.name, "reason": service.loaded.precision.reason}


def keep_label_cost(model: str, rounds: int, texts: int = 16, asked: int = 3, max_new_tokens: int = 32) -> dict[str, Any]:
    """What the keep-label check costs: seconds to sample one candidate and to score it against 4 labels, in alternation.

    A kept paraphrase costs 1/keep-rate candidates, each sampled and scored, plus the text's own label
    once per text. The checkpoint's random weights sample ids its tokenizer decodes to nothing, so the
    scoring side is timed on Chinese texts of a paraphrase's length, prepared as label_keeping prepares them."""
    from bench.lib.workloads import chinese_texts
    from serve_app.engine import SamplingParams

    service = pipeline(model)
    generation = service.text_tasks.augment_requests(chinese_texts(texts, seed=5), [SamplingParams(asked, max_new_tokens, seed=i) for i in range(texts)])
    candidates = chinese_texts(texts * asked, seed=9, min_chars=10, max_chars=40)
    scoring = service.text_tasks.classify_requests(service.text_tasks.classify_jobs(candidates, CLASSIFY_LABELS))
    service.engine.generate(generation[:1]), service.engine.score(scoring[:2])
    sample_s, score_s = float("inf"), float("inf")
    for _ in range(rounds):
        sample_s = min(sample_s, _timed(service.engine.generate, generation))
        score_s = min(score_s, _timed(service.engine.score, scoring))
    per_sample, per_score = sample_s / (texts * asked), score_s / len(scoring)
    check = per_score / per_sample
    return {
        "dtype": service.loaded.precision.name,
        "sample_s_per_candidate": per_sample,
        "score_s_per_candidate": per_score,
        "check_x_sampling": check,
        "x_plain_per_kept_text": {f"{rate:.2f}": (1 + check) / rate + check / asked for rate in (1.0, 0.5, 1 / 3)},
    }


def markdown(out: dict[str, Any]) -> str:
    parts = out["parts"]
    lines = [f"Model `{out['model']}`, {out['threads']} torch threads, one batch at a time."]
    if "formats" in parts:
        f = parts["formats"]
        lines += [
            "",
            f"Classification: {f['classify']}; generation: {f['generation']} (seeded sampling; tokens/s counts the tokens generated). "
            f"Formats alternated over {f['rounds']} round(s), best kept. |Δp| and agreement: label probabilities against float32 on the same texts.",
            "",
            "| format | classify texts/s | generation tokens/s, 32 rows | 1 row | × float32 (classify / 32 rows) | max \\|Δp\\| | top label agrees |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        base = f["formats"]["float32"]
        for name, v in f["formats"].items():
            lines.append(
                f"| {name} | {v['classify_texts_per_s']:.1f} | {v['generate32_tokens_per_s']:.0f} | {v['generate1_tokens_per_s']:.1f} | "
                f"{v['classify_texts_per_s'] / base['classify_texts_per_s']:.2f}x / {v['generate32_tokens_per_s'] / base['generate32_tokens_per_s']:.2f}x | "
                f"{v['max_abs_dp']:.4f} | {v['top_label_agreement']:.0%} |"
            )
    if "auto" in parts:
        a = parts["auto"]
        lines += ["", f"`dtype: auto` here: **{a['dtype']}** on {a['device']} ({a['reason']})."]
    if "keep_label" in parts:
        k = parts["keep_label"]
        rates = ", ".join(f"keep rate {rate}: {x:.2f}x" for rate, x in k["x_plain_per_kept_text"].items())
        lines += ["", f"Augmentation that keeps the label ({k['dtype']}): sampling a candidate (32 tokens) {k['sample_s_per_candidate'] * 1000:.0f} ms, "
                  f"scoring it against 4 labels {k['score_s_per_candidate'] * 1000:.0f} ms ({k['check_x_sampling']:.2f}x); a returned paraphrase costs, "
                  f"against a plain one, {rates}. The keep rate is the model's own."]
    return "\n".join(lines) + "\n"
