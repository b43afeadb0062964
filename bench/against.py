"""The engine in this checkout against an earlier revision, side by side on this machine.

    .venv/bin/python -m bench against b997feb          # the commit before the engine work of issue 36
    .venv/bin/python -m bench against v0.1.0 --dtype float32 --rounds 5
    .venv/bin/python -m bench against HEAD --quick     # the demo model, one round: a smoke run, not results

A target such as "1.7x today's tokens/s" was set on another box; figures from other runs, or other hosts of the
same name, differ by more than most changes gain. So both trees run here, in one run: REV's files (git archive)
and this checkout's, each in its own process on every core, alternated round after round so the machine's drift
hits both alike, each round the best of a few repeats. The work is `python -m bench engine`'s at one dtype:
generation of 32 rows x 64 seeded tokens, classification of 32 texts against 4 labels
(bench/lib/revision_worker.py runs it in each tree with that tree's own engine). Reported: every round's figures,
and this checkout against REV, best against best and median against median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.lib import results
from bench.lib.machine import log as _log
from bench.lib.machine import run_header
from bench.lib.revisions import checkout, git
from bench.lib.workloads import LABELS

WORKER = Path(__file__).resolve().parent / "lib" / "revision_worker.py"
FIGURES = ("generation_tokens_per_s", "classify_texts_per_s")
# bench engine's work: generation rows x new tokens, classification texts x labels.
ROWS, TOKENS, TEXTS, CLASSIFY_LABELS = 32, 64, 32, LABELS[:4]


def log(message: str) -> None:
    _log("against", message)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("revision", help="a commit or tag of this repository (it needs bench/lib/engine_work.py)")
    parser.add_argument("--model", default=None, help="model spec (default: the mT5-base-shaped benchmark checkpoint)")
    parser.add_argument("--dtype", default="auto", help="the dtype both trees load (auto: what each picks here)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per round and tree (the best kept)")
    parser.add_argument("--quick", action="store_true", help="the demo model, one round: a smoke run, not results")
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR)


def main(args: argparse.Namespace) -> dict[str, Any]:
    try:
        theirs = git("rev-parse", "--short", "--verify", f"{args.revision}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"{args.revision!r} is not a commit or tag of this repository") from None
    from bench.lib.checkpoint import model_for_run  # torch: imported when a run starts

    model = model_for_run(args.model, args.quick, log)
    rounds, repeats = (1, 1) if args.quick else (args.rounds, args.repeats)
    # Benchmarks' own outputs (bench/results, the page) do not count as changes to what is measured.
    changed = git("status", "--porcelain", "--", ".", ":!bench/results", ":!BENCHMARKS.md")
    this = f"{git('rev-parse', '--short', 'HEAD')}{' (uncommitted changes)' if changed else ''}"
    runs: dict[str, list[dict[str, Any]]] = {"revision": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="bench-against-") as scratch:
        trees = {"revision": checkout(args.revision, Path(scratch) / "tree"), "this": results.ROOT}
        if not (trees["revision"] / "bench" / "lib" / "engine_work.py").exists():
            raise SystemExit(f"{args.revision} has no bench/lib/engine_work.py: too old to run this work")
        for round_ in range(rounds):
            for side, tree in trees.items():
                figures = run_side(tree, model, args.dtype, repeats)
                runs[side].append(figures)
                log(
                    f"round {round_ + 1}/{rounds} {side}: {figures['generation_tokens_per_s']:.1f} tokens/s, "
                    f"{figures['classify_texts_per_s']:.2f} texts/s ({figures['dtype']})"
                )
    out: dict[str, Any] = {
        **run_header("against", getattr(args, "argv", [])),
        "model": results.relative(model) if model != "demo" else model,
        "dtype": args.dtype,
        "revision": args.revision,
        "revision_commit": theirs,
        "this_commit": this,
        "rounds": rounds,
        "repeats": repeats,
        "runs": runs,
        "ratios": ratios(runs),
    }
    section = markdown(out)
    results.publish("against", out, section, args.out, args.quick, log)
    return out


def run_side(tree: Path, model: str, dtype: str, repeats: int) -> dict[str, Any]:
    """revision_worker.py in `tree`: that tree's engine on the work, its figures."""
    command = [
        sys.executable,
        str(WORKER),
        *("--model", model, "--dtype", dtype, "--repeats", str(repeats)),
        *("--rows", str(ROWS), "--tokens", str(TOKENS), "--texts", str(TEXTS)),
        "--labels",
        *CLASSIFY_LABELS,
    ]
    done = subprocess.run(
        command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the work failed in {tree}:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """This checkout against the revision, per figure: best against best, median against median."""
    out = {}
    for figure in FIGURES:
        ours = [run[figure] for run in runs["this"]]
        theirs = [run[figure] for run in runs["revision"]]
        out[figure] = {
            "best": max(ours) / max(theirs),
            "median": statistics.median(ours) / statistics.median(theirs),
        }
    return out


def markdown(out: dict[str, Any]) -> str:
    runs, r = out["runs"], out["ratios"]
    lines = [
        f"Model `{out['model']}`, `dtype: {out['dtype']}` ({runs['this'][0]['dtype']} here), this checkout "
        f"({out['this_commit']}) against {out['revision']} ({out['revision_commit']}), {out['rounds']} alternated "
        f"round(s), each the best of {out['repeats']}. Generation: {ROWS} rows x {TOKENS} seeded tokens; "
        f"classification: {TEXTS} texts x {len(CLASSIFY_LABELS)} labels.",
        "",
        "| tree | generation tokens/s, per round | classify texts/s, per round |",
        "|---|---|---|",
    ]
    for side, name in (("revision", out["revision"]), ("this", "this checkout")):
        generation = ", ".join(f"{run['generation_tokens_per_s']:.0f}" for run in runs[side])
        classify = ", ".join(f"{run['classify_texts_per_s']:.1f}" for run in runs[side])
        lines.append(f"| {name} | {generation} | {classify} |")
    lines += [
        "",
        f"This checkout against {out['revision']}: generation **{r['generation_tokens_per_s']['best']:.2f}x** best "
        f"against best ({r['generation_tokens_per_s']['median']:.2f}x median against median), classification "
        f"**{r['classify_texts_per_s']['best']:.2f}x** ({r['classify_texts_per_s']['median']:.2f}x).",
    ]
    return "\n".join(lines) + "\n"
