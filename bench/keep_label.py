"""What augmentation with checks costs per returned paraphrase, against plain augmentation.

    .venv/bin/python -m bench.keep_label                  # bench checkpoint, 16 texts, 3 paraphrases each
    .venv/bin/python -m bench.keep_label --model demo --texts 8   # a quick look

The service's own text work and engine in one process (serve_app.pipeline.Pipeline,
the code the Augmenter runs, with the engine in place of the ModelReplica calls), the
dtype `auto` picks, every variant on the same texts and seeds, timed in alternation:

- plain: `num_return_sequences` paraphrases per text, no checks;
- keep_label: only paraphrases whose top label (the /classify scoring) is the text's own,
  default budget (3 x asked);
- keep_label + min_distance 0.3;
- min_distance 0.3 alone.

Reported per variant: seconds for the batch, paraphrases returned, seconds per returned
paraphrase and its ratio to plain, candidates tried, and texts answered with fewer than
asked. Writes bench/results/keep_label.json and the keep-label section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.fidelity import LABEL_POOL
from bench.workloads import chinese_texts

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def variants(labels: list[str]) -> dict[str, Any]:
    from serve_app.label_keeping import Checks, KeepLabel

    return {
        "plain": None,
        "keep_label": Checks(keep_label=KeepLabel(labels)),
        "keep_label + min_distance 0.3": Checks(keep_label=KeepLabel(labels), min_distance=0.3),
        "min_distance 0.3": Checks(min_distance=0.3),
    }


def measure(model: str, texts: int, asked: int, max_new_tokens: int, rounds: int) -> dict[str, Any]:
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
    out: dict[str, Any] = {"model": model, "dtype": pipeline.loaded.precision.name, "texts": texts, "asked": asked, "max_new_tokens": max_new_tokens, "labels": labels, "variants": {}}
    plain_per_text = None
    for name, seconds in runs.items():
        best = min(seconds)
        returned = sum(len(a["augmented_texts"]) for a in answers[name])
        per_text = best / max(returned, 1)
        plain_per_text = plain_per_text or per_text
        out["variants"][name] = {
            "seconds": best,
            "returned": returned,
            "seconds_per_returned": per_text,
            "x_plain_per_returned": per_text / plain_per_text,
            "tried": sum(a["candidates"]["tried"] for a in answers[name]) if name != "plain" else texts * asked,
            "short_texts": sum(len(a["augmented_texts"]) < asked for a in answers[name]),
        }
    return out


def markdown(results: dict[str, Any]) -> str:
    r = results["result"]
    lines = [
        f"Measured {results['date']} on {results['machine']}; torch {results['torch']}, {results['threads']} threads; "
        f"`{results['command']}`. {r['texts']} texts x {r['asked']} paraphrases of at most {r['max_new_tokens']} tokens, "
        f"{r['dtype']}, labels {', '.join(r['labels'])}; best of the rounds, variants in alternation.",
        "",
        "| variant | seconds | returned | candidates tried | texts short of 3 | s per returned | x plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        lines.append(
            f"| {name} | {v['seconds']:.1f} | {v['returned']} | {v['tried']} | {v['short_texts']} | {v['seconds_per_returned']:.2f} | {v['x_plain_per_returned']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.checkpoint import build_checkpoint
    from bench.report import update_section
    from bench.run import machine_description
    from serve_app.engine.precision import cpu_has_amx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bench", help="'bench' (mT5-base-shaped checkpoint), 'demo', or a model spec")
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
    given = argv if argv is not None else sys.argv[1:]
    results: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": ".venv/bin/python -m bench.keep_label" + (" " + shlex.join(given) if given else ""),
        "machine": machine_description()["description"] + f"; torch reports AMX: {cpu_has_amx()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    results["result"] = measure(spec, args.texts, args.asked, args.max_new_tokens, args.rounds)
    results["result"]["model_label"] = {"bench": "mT5-base-shaped (random)", "demo": "demo"}.get(args.model, args.model)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    if not args.no_md:
        update_section(args.md, "keep-label", markdown(results), "Augmentation that keeps the label: what the check costs (bench.keep_label)")
    return results


if __name__ == "__main__":
    main()
