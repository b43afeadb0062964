"""Where the machine's CPU goes while Serve (the shipped config.yaml) runs a closed loop: per process, and per lane.

    .venv/bin/python -m bench.cpu_breakdown --workload augment --clients 32
    .venv/bin/python -m bench.cpu_breakdown --arm '{}' --arm '{"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}' --rounds 2

bench.run reports the model process against all of Serve. This splits the rest (controller, proxy,
Ingress, Classifier / Augmenter, GCS, raylet, dashboard, log monitor), because on a CPU box every
core they take is a core the engine ceiling has and the ModelReplica does not (issue 11's share
targets); and how often each process's threads wake (each wake-up on a busy core preempts what runs
there: the model's lanes, when both cores are theirs). The replica's own side comes from its
scheduler log lines over the same window: mean rows and wall milliseconds per decoding step, per
lane. Each --arm is a set of environment variables for `serve run` (Ray's runtime switches); arms
alternate, a fresh Serve each, so drift on a shared box falls on every arm alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import loadgen, procs, report
from bench.run import RESULTS_DIR, ServeProcess, build_workloads, log
from bench.run import parse_args as bench_run_args

# Scheduler summary lines in serve run's output (serve_app/deployments/replica_metrics.py).
SUMMARY = re.compile(r"scheduler(?:\[lane=(\d+)\])?: iterations=\d+ busy=\S+ steps=(\d+) rows_per_step_mean=([\d.]+) .*?step_ms_mean=([\d.]+)")


def role_of(command: str) -> str:
    """A short name for one of Serve's processes, from its command line: the deployment or Ray component it runs."""
    if command.startswith("ray::"):
        # ray::ServeReplica:<app>:<Deployment>[.<method running now>], ray::ServeController[.<method>]
        return command.split()[0].removeprefix("ray::").removeprefix("ServeReplica:").split(":")[-1].split(".")[0]
    words = command.split()
    scripts = [Path(word).stem for word in words if word.endswith(".py")]
    if "run" in words and any(Path(word).name == "serve" for word in words):
        return "serve run (driver)"
    return scripts[0] if scripts else Path(words[0]).name if words else "?"


def by_role(before: dict[int, float | None], read: Callable[[int], float | None], wall: float) -> dict[str, float]:
    """Per role, how much `read(pid)` grew per second since `before` was taken (all of the role's processes), largest first."""
    rates: dict[str, float] = {}
    for pid, start in before.items():
        end = read(pid)
        if start is None or end is None:
            continue
        role = role_of(procs.cmdline(pid))
        rates[role] = rates.get(role, 0.0) + (end - start) / wall
    return dict(sorted(rates.items(), key=lambda item: -item[1]))


def lane_steps(log_text: str) -> dict[str, dict[str, float]]:
    """Per lane: decoding steps, their mean rows and mean wall milliseconds, from the summary lines."""
    totals: dict[str, list[float]] = {}
    for lane, steps, rows, step_ms in SUMMARY.findall(log_text):
        total = totals.setdefault(lane or "0", [0.0, 0.0, 0.0])
        count = int(steps)
        total[0] += count
        total[1] += count * float(rows)
        total[2] += count * float(step_ms)
    return {lane: {"steps": s, "rows_mean": r / s, "step_ms_mean": ms / s} for lane, (s, r, ms) in sorted(totals.items()) if s}


def measure_arm(model: str, env: dict[str, str], workload_name: str, clients: int, warmup_s: float, duration_s: float,
                serve_args: dict[str, Any] | None = None) -> dict[str, Any]:
    shape = bench_run_args([])  # the augment workload's shape (n, max_length) as bench.run and bench.share use it
    workload = build_workloads([workload_name], shape.augment_n, shape.augment_max_length)[workload_name]
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as scratch:
        serve = ServeProcess(model, Path(scratch), serve_args or {}, {}, env=env)
        serve.start()
        try:
            asyncio.run(loadgen.warm_up(serve.url, workload))
            results: list[Any] = []
            load = threading.Thread(
                target=lambda: results.extend(
                    asyncio.run(loadgen.run_mix(serve.url, [(workload, clients)], system="serve", duration_s=duration_s, warmup_s=warmup_s, drain_s=5))
                )
            )
            load.start()
            time.sleep(warmup_s)  # the CPU window is the load's measured window
            pids = [serve.root_pid, *procs.descendants(serve.root_pid)]
            before = {pid: procs.cpu_seconds(pid) for pid in pids}
            slept: dict[int, float | None] = {pid: procs.wakeups(pid) for pid in pids}
            replicas = procs.find_replica_pids(serve.root_pid)
            preempted = sum(procs.preemptions(pid) for pid in replicas)
            log_offset = serve.log_path.stat().st_size
            started = time.monotonic()
            time.sleep(duration_s)
            wall = time.monotonic() - started
            cores = by_role(before, procs.cpu_seconds, wall)  # CPU seconds per second: cores
            woke = by_role(slept, procs.wakeups, wall)
            preempted = sum(procs.preemptions(pid) for pid in replicas) - preempted
            load.join()
            serve.idle()  # the lanes' last summaries reach the log
            lanes = lane_steps(serve.log_path.read_text(errors="replace")[log_offset:])
        finally:
            serve.stop()
    point = results[0].as_dict()
    model_cores = cores.get("ModelReplica", 0.0)
    return {
        "env": env,
        "requests_per_s": report.throughput(point),
        "errors": point["errors"],
        "p50_s": point["p50_s"],
        "cores": {role: round(value, 3) for role, value in cores.items()},
        "model_cores": round(model_cores, 3),
        "rest_of_serve_cores": round(sum(cores.values()) - model_cores, 3),
        "lanes": lanes,
        # how often the model's threads lost their core to another thread (bench.neighbour measures what that costs)
        "model_preempted_per_s": round(preempted / wall, 1),
        # how often each role's threads went to sleep, hence woke and took a core from whatever ran there
        "wakeups_per_s": {role: round(value) for role, value in woke.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: build/reuse the mT5-base-shaped random checkpoint)")
    parser.add_argument("--workload", choices=["classify", "augment"], default="augment")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--arm", type=json.loads, action="append", default=None, help="JSON environment for serve run (repeatable; default: one arm, {})")
    parser.add_argument("--rounds", type=int, default=1, help="times every arm runs, alternating")
    parser.add_argument("--serve-args", type=json.loads, default={}, help='JSON merged into config.yaml app args in every arm, e.g. \'{"torch_threads": 1}\'')
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu_breakdown.json")
    args = parser.parse_args(argv)
    if args.model:
        model = args.model
    else:
        from bench.checkpoint import build_checkpoint

        model = str(build_checkpoint(None, log=log))
    arms = args.arm or [{}]
    runs = []
    for round_index in range(args.rounds):
        for env in arms:
            log(f"round {round_index + 1}: serve run with {env or 'the default environment'}")
            run = measure_arm(model, env, args.workload, args.clients, args.warmup, args.duration, args.serve_args)
            run["round"] = round_index + 1
            runs.append(run)
            top = ", ".join(f"{role} {value:.3f}" for role, value in list(run["cores"].items())[:8])
            log(f"  {run['requests_per_s']:.2f} req/s, {run['errors']} errors; cores: {top}; model preempted {run['model_preempted_per_s']}/s; "
                f"wake-ups/s: {', '.join(f'{role} {value}' for role, value in list(run['wakeups_per_s'].items())[:8])}; lanes {run['lanes']}")
    results = report.run_header("bench.cpu_breakdown", argv) | {
        "workload": args.workload,
        "serve_args": args.serve_args,
        "clients": args.clients,
        "duration_s": args.duration,
        "runs": runs,
    }
    report.save_results(results, args.out)
    log(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
