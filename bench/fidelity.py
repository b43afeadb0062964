"""Fidelity of the faster settings: their label probabilities against float32 full-vocabulary scoring, and their speed.

    .venv/bin/python -m bench fidelity                               # benchmark checkpoint and demo model, 256 inputs
    each
    .venv/bin/python -m bench fidelity --models /path/to/real/model  # the real weights, where they are at hand
    .venv/bin/python -m bench fidelity --quick                       # the demo model, 32 inputs (not results)
    .venv/bin/python -m bench fidelity --models /path/to/real/model --int8-by-layer   # where int8 moves the scores

For each model, every variant scores the same classification inputs (Chinese texts, 2-8
candidate labels drawn from a pool of 24) and is compared with the reference, float32 weights
normalised over the full vocabulary (the model's own likelihood):

- label_tokens: float32, normalised over the labels' tokens (`scoring: label_tokens`);
- each other number format (`dtype: bfloat16`, `int8`, `auto`), full vocabulary;
- batch invariance: each input scored alone against inside its batch of 32, per format.

Reported: largest and mean |Δp| over all label probabilities, top-label agreement, and
requests/s at batch 32 (the variants timed in alternation).

With --int8-by-layer, int8 is also put into one group of linear layers at a time (encoder and
decoder attention, the feed-forward blocks' input and output projections, lm_head) and, the
other way round, everywhere but that group: the group whose removal brings int8 back to
float32's answers is the one to keep out of int8 (or quantise better). Only real weights can
say which: on random weights any rounding flips the top label.
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
# mT5's linear layers by module name, in groups that int8 is put into, or kept out of, one at a time.
INT8_GROUPS = {
    "encoder attention": r"^encoder\.block\.\d+\.layer\.0\.SelfAttention\.",
    "encoder feed-forward in (wi_0, wi_1)": r"^encoder\.block\.\d+\.layer\.1\.DenseReluDense\.wi",
    "encoder feed-forward out (wo)": r"^encoder\.block\.\d+\.layer\.1\.DenseReluDense\.wo$",
    "decoder self-attention": r"^decoder\.block\.\d+\.layer\.0\.SelfAttention\.",
    "decoder cross-attention": r"^decoder\.block\.\d+\.layer\.1\.EncDecAttention\.",
    "decoder feed-forward in (wi_0, wi_1)": r"^decoder\.block\.\d+\.layer\.2\.DenseReluDense\.wi",
    "decoder feed-forward out (wo)": r"^decoder\.block\.\d+\.layer\.2\.DenseReluDense\.wo$",
    "lm_head": r"^lm_head$",
}


def log(message: str) -> None:
    _log("fidelity", message)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="'bench' (the mT5-base-shaped checkpoint), 'demo', or model specs (default: bench demo)",
    )
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument(
        "--dtypes", nargs="+", default=["bfloat16", "int8", "auto"], help="formats compared with float32"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--int8-by-layer",
        action="store_true",
        help="also int8 in one group of linears at a time, and everywhere but it",
    )
    parser.add_argument("--quick", action="store_true", help="the demo model, 32 inputs: a smoke run, not results")
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    models = args.models or (["demo"] if args.quick else ["bench", "demo"])
    count = BATCH if args.quick else args.inputs
    out: dict[str, Any] = {
        **run_header("fidelity", getattr(args, "argv", [])),
        "threads": torch.get_num_threads(),
        "models": [],
    }
    from bench.lib.checkpoint import model_for_run  # torch: imported when a run starts

    for name in models:
        spec = model_for_run(None, False, log) if name == "bench" else name
        log(f"{name}: {count} inputs ...")
        measured = measure(spec, count, args.device, args.dtypes, args.int8_by_layer)
        measured["label"] = {"bench": "mT5-base-shaped (random)", "demo": "demo"}.get(name, results.relative(name))
        out["models"].append(measured)
    section = markdown(out)
    results.publish("fidelity", out, section, args.out, args.quick, log)
    return out


def measure(model: str, count: int, device: str, dtypes: list[str], by_layer: bool = False) -> dict[str, Any]:
    """Every variant's probabilities on the same inputs, against the reference's."""
    from bench.lib.engine_work import pipeline

    inputs = classify_inputs(count)
    engines: dict[str, Any] = {}
    requests: dict[str, list[Any]] = {}
    reasons: dict[str, str] = {}
    for dtype in ["float32", *[d for d in dtypes if d != "float32"]]:
        service = pipeline(model, device, dtype)
        name = (
            f"{service.loaded.precision.name}, full vocabulary"
            if dtype != "auto"
            else f"auto ({service.loaded.precision.name}), full vocabulary"
        )
        jobs = [service.text_tasks.classify_jobs([text], labels)[0] for text, labels in inputs]
        engines[name] = service.engine
        requests[name] = service.text_tasks.classify_requests(jobs, "score", "vocabulary")
        reasons[name] = service.loaded.precision.reason
        if dtype == "float32":
            engines["float32, label_tokens"] = service.engine
            requests["float32, label_tokens"] = [
                dataclasses.replace(r, normalization="label_tokens") for r in requests[name]
            ]
    probabilities = {name: score_all(engines[name], requests[name]) for name in engines}
    speeds = interleaved_speeds(engines, requests)
    out: dict[str, Any] = {
        "model": results.relative(model) if model != "demo" else model,
        "inputs": count,
        "variants": {},
    }
    for name in engines:
        figures: dict[str, Any] = {
            "requests_per_s": speeds[name],
            "x_reference_speed": speeds[name] / speeds[REFERENCE],
        }
        if name != REFERENCE:
            figures.update(compare(probabilities[REFERENCE], probabilities[name]))
        if "label_tokens" not in name:
            alone = [engines[name].score([request])[0].probabilities for request in requests[name][:BATCH]]
            figures["alone_vs_batch"] = compare(probabilities[name][:BATCH], alone)
            figures["dtype_reason"] = reasons[name]
        out["variants"][name if name != REFERENCE else f"{REFERENCE} (reference)"] = figures
    if by_layer:
        out["int8_by_layer"] = int8_by_layer(model, requests[REFERENCE], probabilities[REFERENCE])
    return out


def int8_by_layer(model: str, requests: list[Any], reference: list[list[float]]) -> dict[str, Any]:
    """int8 in each group of INT8_GROUPS alone, and everywhere but it, against float32: where int8 moves the scores."""
    import copy
    import re

    from torch import nn

    from serve_app.engine import Seq2SeqEngine, load_model
    from serve_app.engine.fused_layers import fuse_layers
    from serve_app.engine.int8_linear import quantise_linears

    base = load_model(model, device="cpu", dtype="float32", relay_head=False).model
    fuse_layers(base)  # as `dtype: int8` loads it
    linears = {name for name, module in base.named_modules() if isinstance(module, nn.Linear)}
    groups = {group: {name for name in linears if re.search(pattern, name)} for group, pattern in INT8_GROUPS.items()}
    missed = linears - set().union(*groups.values())
    if missed:
        raise ValueError(f"linear layers in no group of INT8_GROUPS (this is not mT5's layout?): {sorted(missed)[:5]}")
    variants: dict[str, Any] = {}
    choices = [("everywhere", "", linears)]
    choices += [
        (mode, group, chosen)
        for group, names in groups.items()
        for mode, chosen in (("only", names), ("all but", linears - names))
    ]
    for mode, group, chosen in choices:
        quantised = copy.deepcopy(base)
        quantise_linears(quantised, chosen)
        engine = Seq2SeqEngine(quantised)
        score_all(engine, requests[:2])  # first-call allocations
        began = time.perf_counter()
        probabilities = score_all(engine, requests)
        speed = len(requests) / (time.perf_counter() - began)
        variants[f"{mode} {group}".strip()] = {
            "mode": mode,
            "group": group,
            "quantised_linears": len(chosen),
            "requests_per_s": speed,
            **compare(reference, probabilities),
        }
        del engine
    for figures in variants.values():
        figures["x_int8_speed"] = figures["requests_per_s"] / variants["everywhere"]["requests_per_s"]
    return {"linears": len(linears), "variants": variants}


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
            chunk = requests[name][(round_ * BATCH) % len(requests[name]) :][:BATCH]
            began = time.perf_counter()
            engine.score(chunk)
            seconds[name] += (time.perf_counter() - began) * BATCH / len(chunk)
    return {name: rounds * BATCH / spent for name, spent in seconds.items()}


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"{out['threads']} torch threads. Reference: float32 weights, probabilities normalised over the full "
        "vocabulary (the default "
        "`scoring: vocabulary`). |Δp| is over every candidate's probability; agreement is the share of inputs with the "
        "same top label; "
        f"speed is classify requests/s at batch {BATCH}, the variants alternated; alone vs batch scores the first "
        f"{BATCH} inputs one by one "
        "against inside their batch, in the same format.",
        "",
        "| model | variant | req/s | × reference | max \\|Δp\\| | mean \\|Δp\\| | top label agrees | alone vs batch: "
        "max \\|Δp\\|, agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in out["models"]:
        for name, v in model["variants"].items():
            invariance = v.get("alone_vs_batch")
            inv = f"{invariance['max_abs_dp']:.1e}, {invariance['top_label_agreement']:.0%}" if invariance else "–"
            lines.append(
                f"| {model['label']} | {name} | {v['requests_per_s']:.2f} | {v.get('x_reference_speed', 1.0):.2f}x | "
                f"{v.get('max_abs_dp', 0.0):.4f} | {v.get('mean_abs_dp', 0.0):.5f} | "
                f"{v.get('top_label_agreement', 1.0):.1%} | {inv} |"
            )
    for model in out["models"]:
        if "int8_by_layer" in model:
            lines += ["", *int8_by_layer_table(model)]
    return "\n".join(lines) + "\n"


def int8_by_layer_table(model: dict[str, Any]) -> list[str]:
    study = model["int8_by_layer"]
    lines = [
        f"int8 layer by layer, {model['label']} ({study['linears']} linear layers): int8 in one group only, and "
        "everywhere but that group, "
        "against float32; speed is one pass over the inputs at batch 32, against int8 everywhere in the same run.",
        "",
        "| int8 in | linears | req/s | × int8 everywhere | max \\|Δp\\| | top label agrees |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, v in study["variants"].items():
        lines.append(
            f"| {name} | {v['quantised_linears']} | {v['requests_per_s']:.2f} | {v['x_int8_speed']:.2f}x | "
            f"{v['max_abs_dp']:.4f} | {v['top_label_agreement']:.1%} |"
        )
    return lines
