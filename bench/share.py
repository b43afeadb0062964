"""The serving layer's share of the engine-only ceiling (issue 11's targets), in paired rounds.

bench.run measures the ceiling once before and once after Serve. On a shared machine the
ceiling moved by 20-40 % within one such run (BENCHMARKS.md, session 7): more than the
distance to the targets. Here each round starts the shipped config.yaml afresh, measures
/classify and /augment at one concurrency, and stops it; the ceiling is measured before the
first round and after every round, so each round sits between two ceilings taken minutes
apart. A round's share is Serve's throughput over the mean of those two; the figure is the
median over rounds, and every round is kept.

    .venv/bin/python -m bench.share --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import report
from bench.run import RESULTS_DIR, ServeProcess, bench_system, build_workloads, engine_ceiling, log, machine_description, serve_dtype
from bench.run import parse_args as bench_run_args

WORKLOADS = ["classify", "augment"]
Ceiling = dict[str, dict[str, Any]]  # workload -> bench.ceiling's result


def round_shares(points: list[dict[str, Any]], before: Ceiling, after: Ceiling) -> dict[str, dict[str, float]]:
    """One round: per workload, Serve's throughput, the two ceilings around it, and the share of their mean.

    Where both sides report their CPU, the share splits into two factors (share = cpu_share x
    work_per_cpu): the cores Serve's model process got against the cores the engine alone kept
    busy, and the requests each of its CPU seconds served against the engine's. A work_per_cpu
    near 1 says the serving core wastes nothing; the rest of the loss is CPU taken by other processes.
    """
    shares = {}
    for point in points:
        workload = point["workload"]
        if point["system"] != "serve" or workload not in before:
            continue
        ceiling = (before[workload]["requests_per_s"] + after[workload]["requests_per_s"]) / 2
        serve_rps = report.throughput(point)
        measured = {
            "serve_rps": serve_rps,
            "ceiling_before_rps": before[workload]["requests_per_s"],
            "ceiling_after_rps": after[workload]["requests_per_s"],
            "share": serve_rps / ceiling,
            "errors": point["errors"],
        }
        model_cores = point.get("model_cpu_cores")
        ceiling_cores = [side[workload].get("cpu_cores") for side in (before, after)]
        if model_cores and all(ceiling_cores):
            cores = statistics.mean(ceiling_cores)
            engine_rps_per_core = statistics.mean(side[workload]["requests_per_s"] / side[workload]["cpu_cores"] for side in (before, after))
            measured["serve_model_cores"] = model_cores
            measured["ceiling_cores"] = cores
            measured["cpu_share"] = model_cores / cores
            measured["work_per_cpu"] = (serve_rps / model_cores) / engine_rps_per_core
        shares[workload] = measured
    return shares


def verdict(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per workload: the median share over rounds, its range, and whether the median meets the target."""
    summary = {}
    for workload, target in report.SERVING_SHARE.items():
        shares = [measured[workload]["share"] for measured in rounds if workload in measured]
        if shares:
            median = statistics.median(shares)
            summary[workload] = {"target": target, "median": median, "low": min(shares), "high": max(shares), "rounds": len(shares), "met": median >= target}
            for factor in ("cpu_share", "work_per_cpu"):
                values = [measured[workload][factor] for measured in rounds if factor in measured.get(workload, {})]
                if values:
                    summary[workload][f"median_{factor}"] = statistics.median(values)
    return summary


def markdown(rounds: list[dict[str, dict[str, float]]], summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| round | workload | Serve req/s | ceiling before → after | share | model cores / engine cores | work per CPU second |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, measured in enumerate(rounds, 1):
        for workload, m in measured.items():
            cpu = f"{m['serve_model_cores']:.2f} / {m['ceiling_cores']:.2f} = {m['cpu_share']:.0%}" if "cpu_share" in m else ""
            work = f"{m['work_per_cpu']:.0%}" if "work_per_cpu" in m else ""
            lines.append(
                f"| {index} | {workload} | {m['serve_rps']:.2f} | {m['ceiling_before_rps']:.2f} → {m['ceiling_after_rps']:.2f} | {m['share']:.0%} | {cpu} | {work} |"
            )
    for workload, s in summary.items():
        cpu = f"{s['median_cpu_share']:.0%}" if "median_cpu_share" in s else ""
        work = f"{s['median_work_per_cpu']:.0%}" if "median_work_per_cpu" in s else ""
        lines.append(
            f"| median | {workload} | | | **{s['median']:.0%}** ({s['low']:.0%}–{s['high']:.0%}; target {s['target']:.0%}: {'met' if s['met'] else 'not met'}) | {cpu} | {work} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """This tool's options, and the bench.run options they imply (durations, workloads, checkpoint)."""
    parser = argparse.ArgumentParser(description="Serve's share of the engine-only ceiling, in paired rounds (issue 11).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=None, help="model spec (default: build/reuse the mT5-base-shaped random checkpoint)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients of Serve, and the ceiling's batch")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds of /classify per round")
    parser.add_argument("--augment-duration", type=float, default=120.0, help="measured seconds of /augment per round")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "share.json")
    parser.add_argument("--serve-args", default="{}", help='JSON merged into config.yaml app args for Serve and followed by the ceiling (torch_threads, scheduler_lanes, dtype), e.g. \'{"torch_threads": 1}\'')
    ours = parser.parse_args(argv)
    run_argv = ["--workloads", *WORKLOADS, "--concurrency", str(ours.concurrency), "--duration", str(ours.duration), "--augment-duration", str(ours.augment_duration),
                "--serve-args", ours.serve_args]
    return ours, bench_run_args(run_argv + (["--model", ours.model] if ours.model else []))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ours, args = parse_args(argv)
    if args.model:
        model = args.model
    else:
        from bench.checkpoint import build_checkpoint

        model = str(build_checkpoint(args.checkpoint_dir, log=log))
    dtype = serve_dtype(args.serve_args)
    workloads = build_workloads(WORKLOADS, args.augment_n, args.augment_max_length)
    ceilings = [engine_ceiling(model, WORKLOADS, ours.concurrency, args, dtype)]
    rounds = []
    for index in range(ours.rounds):
        log(f"round {index + 1} of {ours.rounds}")
        with tempfile.TemporaryDirectory(prefix="bench-share-") as scratch:
            points, _ = bench_system(ServeProcess(model, Path(scratch), args.serve_args, {}), workloads, args)
        ceilings.append(engine_ceiling(model, WORKLOADS, ours.concurrency, args, dtype))
        rounds.append(round_shares(points, ceilings[-2], ceilings[-1]))
    summary = verdict(rounds)
    results = {
        "command": ".venv/bin/python -m bench.share " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(),
        "model": model,
        "dtype": dtype,
        "concurrency": ours.concurrency,
        "rounds": rounds,
        "ceilings": ceilings,
        "summary": summary,
    }
    ours.out.parent.mkdir(parents=True, exist_ok=True)
    ours.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(markdown(rounds, summary))
    log(f"wrote {ours.out}")
    return results


if __name__ == "__main__":
    main()
