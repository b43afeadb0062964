"""What augmentation with checks costs per returned paraphrase, against plain augmentation.

    .venv/bin/python -m bench.keep_label                  # bench checkpoint + the demo model, 16 texts x 3

In one process, with the engine and dtype (`auto`) the service runs:

1. parts, on the mT5-base-shaped checkpoint: seconds to sample one candidate (32 tokens)
   and to score one candidate against 4 labels (the check), timed in alternation; from
   them, what a kept paraphrase costs against a plain one at a given keep rate;
2. the whole path (serve_app.pipeline.Pipeline, i.e. label_keeping.augment_checked, the
   code the Augmenter runs) on the demo model: plain, keep_label, keep_label +
   min_distance 0.3, min_distance 0.3, with seconds per returned paraphrase, candidates
   tried and texts answered with fewer than asked.

Writes bench/results/keep_label.json and the keep-label section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from bench.fidelity import LABEL_POOL
from bench.workloads import chinese_texts

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def variants(labels: list[str]) -> dict[str, Any]:
    from serve_app.text.label_keeping import Checks, KeepLabel

    return {
        "plain": None,
        "keep_label": Checks(keep_label=KeepLabel(labels)),
        "keep_label + min_distance 0.3": Checks(keep_label=KeepLabel(labels), min_distance=0.3),
        "min_distance 0.3": Checks(min_distance=0.3),
    }


def measure_parts(model: str, texts: int, asked: int, max_new_tokens: int, rounds: int) -> dict[str, Any]:
    """Seconds per candidate to sample it and to score it (the check), with the engine the service runs.

    The bench checkpoint's random weights sample ids its (demo) tokenizer decodes to nothing, so the
    end-to-end path would have no candidate to score there; the scoring side is therefore timed on
    Chinese texts of a paraphrase's length, prepared exactly as label_keeping prepares candidates."""
    from serve_app import augmentation, classification
    from serve_app.engine import SamplingParams
    from serve_app.pipeline import Pipeline
    from serve_app.text.prompts import Template
    from serve_app.settings import AppSettings

    pipeline = Pipeline(AppSettings(model=model))
    labels = random.Random(5).sample(LABEL_POOL, 4)
    prompts = augmentation.prepare_batch(pipeline.encoder, Template(pipeline.settings.templates.augment), chinese_texts(texts, seed=5))
    generation = [augmentation.engine_requests([prompt], SamplingParams(num_return_sequences=asked, max_new_tokens=max_new_tokens, seed=i))[0] for i, prompt in enumerate(prompts)]
    candidates = chinese_texts(texts * asked, seed=9, min_chars=10, max_chars=40)
    template = Template(pipeline.settings.templates.classification)
    scoring = [classification.scoring_request(classification.prepare_job(pipeline.encoder, template, text, labels), pipeline.settings.scoring) for text in candidates]
    pipeline.engine.generate(generation[:1]), pipeline.engine.score(scoring[:2])  # first-call allocations
    sample_s, score_s = [], []
    for _ in range(rounds):  # alternated, so the shared box's drift hits both alike
        began = time.perf_counter()
        outputs = pipeline.engine.generate(generation)
        sample_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        pipeline.engine.score(scoring)
        score_s.append(time.perf_counter() - began)
    sampled = sum(len(sequences) for sequences in outputs)
    per_sample, per_score = min(sample_s) / sampled, min(score_s) / len(scoring)
    check = per_score / per_sample
    return {
        "model": model,
        "dtype": pipeline.loaded.precision.name,
        "labels": labels,
        "candidates": sampled,
        "tokens_per_candidate": max_new_tokens,
        "sample_s_per_candidate": per_sample,
        "score_s_per_candidate": per_score,
        "check_x_sampling": check,
        # a kept text costs 1/keep_rate candidates, each sampled and scored; the text's own label is scored once per text
        "x_plain_per_kept_text": {f"{rate:.2f}": (1 + check) / rate + check / asked for rate in (1.0, 0.5, 1 / 3)},
    }


def measure_flow(model: str, texts: int, asked: int, max_new_tokens: int, rounds: int) -> dict[str, Any]:
    """The whole path (label_keeping.augment_checked through the Pipeline) against plain augmentation."""
    from serve_app.engine import SamplingParams
    from serve_app.pipeline import Pipeline
    from serve_app.settings import AppSettings

    pipeline = Pipeline(AppSettings(model=model))
    inputs = chinese_texts(texts, seed=5)
    labels = random.Random(5).sample(LABEL_POOL, 4)
    params = [SamplingParams(num_return_sequences=asked, max_new_tokens=max_new_tokens, seed=1000 + i) for i in range(texts)]
    pipeline.augment(inputs[:2], params[:2])  # first-call allocations
    runs: dict[str, list[float]] = {name: [] for name in variants(labels)}
    answers: dict[str, list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for name, checks in variants(labels).items():
            began = time.perf_counter()
            answers[name] = pipeline.augment(inputs, params, checks)
            runs[name].append(time.perf_counter() - began)
    out: dict[str, Any] = {"model": model, "dtype": pipeline.loaded.precision.name, "texts": texts, "asked": asked, "labels": labels, "variants": {}}
    plain_per_text = None
    for name, seconds in runs.items():
        best = min(seconds)
        returned = sum(len(a["augmented_texts"]) for a in answers[name])
        per_text = best / max(returned, 1)
        plain_per_text = plain_per_text or per_text
        out["variants"][name] = {
            "seconds": best,
            "returned": returned,
            "tried": sum(a["candidates"]["tried"] for a in answers[name]) if name != "plain" else texts * asked,
            "seconds_per_returned": per_text,
            "x_plain_per_returned": per_text / plain_per_text,
            "short_texts": sum(len(a["augmented_texts"]) < asked for a in answers[name]),
        }
    return out


def markdown(results: dict[str, Any]) -> str:
    parts, flow = results["parts"], results["flow"]
    rates = parts["x_plain_per_kept_text"]
    lines = [
        f"Measured {results['date']} on {results['machine']}; torch {results['torch']}, {results['threads']} threads; `{results['command']}`.",
        "",
        f"**The check's cost** (mT5-base-shaped checkpoint, {parts['dtype']}, {parts['candidates']} candidates of {parts['tokens_per_candidate']} tokens, "
        f"{len(parts['labels'])} labels, the configured scoring): sampling a candidate {parts['sample_s_per_candidate'] * 1000:.0f} ms, "
        f"scoring it {parts['score_s_per_candidate'] * 1000:.0f} ms ({parts['check_x_sampling']:.2f}x). A kept text costs 1/keep-rate "
        f"candidates, each sampled and scored, plus the text's own label once per text: "
        + ", ".join(f"{rate} keep rate → {x:.2f}x plain" for rate, x in rates.items())
        + " per returned paraphrase. The keep rate is the model's: random weights cannot tell it (their samples decode to nothing with "
        "the demo tokenizer), the real checkpoint will.",
        "",
        f"**The whole path** on the demo model ({flow['dtype']}; random text, so the keep rate is not the real model's; "
        f"{flow['texts']} texts x {flow['asked']}, labels {', '.join(flow['labels'])}):",
        "",
        "| variant | seconds | returned | candidates tried | texts short | s per returned | x plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in flow["variants"].items():
        lines.append(f"| {name} | {v['seconds']:.2f} | {v['returned']} | {v['tried']} | {v['short_texts']} | {v['seconds_per_returned']:.3f} | {v['x_plain_per_returned']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.checkpoint import build_checkpoint
    from bench.report import run_header, save_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bench", help="the checkpoint whose sampling and scoring are timed: 'bench' (mT5-base-shaped), or a model spec")
    parser.add_argument("--flow-model", default="demo", help="the model the whole path runs on (default: demo)")
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--asked", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "keep_label.json")
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-md", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    spec = str(build_checkpoint()) if args.model == "bench" else args.model
    results = run_header("bench.keep_label", argv)
    results["parts"] = measure_parts(spec, args.texts, args.asked, args.max_new_tokens, args.rounds)
    results["flow"] = measure_flow(args.flow_model, args.texts, args.asked, args.max_new_tokens, args.rounds)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    md = None if args.no_md else args.md
    save_results(results, args.out, md, "keep-label", markdown(results), "Augmentation that keeps the label: what the check costs (bench.keep_label)")
    return results


if __name__ == "__main__":
    main()
