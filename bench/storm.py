"""Slow and abandoned clients: what they cost a well-behaved client, and whether the service gets its memory back.

    .venv/bin/python -m bench storm           # the mT5-base-shaped checkpoint, shipped config.yaml (~5 min on 2 cores)
    .venv/bin/python -m bench storm --quick   # the demo model, short windows (not results)

One `serve run` of the shipped config.yaml. A well-behaved closed-loop /classify client (no text sent twice) is
measured quiet, then during a storm of 200 clients that send their body a byte a second and 200 that send half a
body and hang up, every second, again and again (bench/lib/storm.py). A minute after the storm, the resident
memory of Serve's HTTP proxy and of the Ingress is compared with before it, and the proxy's open client
connections are counted. Targets (issue 40): the well-behaved client's p95 during the storm at most 1.5x its quiet
p95; memory back within 10 % a minute after.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bench.lib import results
from bench.lib.loadgen import run_mix, warm_up
from bench.lib.machine import log as _log
from bench.lib.machine import run_header
from bench.lib.nginx_front import nginx_in_front_of
from bench.lib.serve_run import ServeRun, free_port, shipped_config
from bench.lib.storm import storm_elsewhere
from bench.lib.workloads import classify_workload

SLOW, ABANDONED = 200, 200


def log(message: str) -> None:
    _log("storm", message)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model spec (default: the mT5-base-shaped benchmark checkpoint)")
    parser.add_argument("--quick", action="store_true", help="the demo model, short windows: a smoke run, not results")
    parser.add_argument("--clients", type=int, default=1, help="well-behaved closed-loop /classify clients")
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR)


def memory_mb(watched: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """Resident memory of the watched processes (Serve's HTTP proxy, the Ingress replicas that ran before the
    storm), MiB per kind."""
    return {name: sum(proc.memory_info().rss for proc in procs) / 2**20 for name, procs in watched.items()}


def proxy_connections(run: ServeRun) -> int:
    """Client connections Serve's proxy holds on its HTTP port."""
    return sum(
        1
        for proc in run.processes("ProxyActor")
        for c in proc.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == run.port and c.raddr
    )


def through(front_url: str, run: ServeRun, clients: int, windows: tuple[float, float, float]) -> dict[str, Any]:
    """Quiet, then the storm, then a minute to settle, all through `front_url` (Serve's proxy itself, or nginx)."""
    warmup, duration, after = windows
    workload = classify_workload()
    [quiet] = asyncio.run(
        run_mix(front_url, [(workload, clients)], system="quiet", duration_s=duration, warmup_s=warmup)
    )
    watched = {"proxy": run.processes("ProxyActor"), "Ingress": run.processes("ServeReplica:mt5:Ingress")}
    memory_before = memory_mb(watched)
    connections_before = proxy_connections(run)
    with ThreadPoolExecutor(1) as pool:
        report = pool.submit(storm_elsewhere, front_url, warmup + duration, SLOW, ABANDONED)
        [during] = asyncio.run(
            run_mix(
                front_url,
                [(workload, clients)],
                system="storm",
                duration_s=duration,
                warmup_s=warmup,
                first_index=100_000,
            )
        )
        storm_report = report.result()
    memory_end = memory_mb(watched)
    log(f"  p95 quiet {quiet.p95_s * 1000:.0f} ms, during the storm {during.p95_s * 1000:.0f} ms; settling")
    time.sleep(after)
    memory_after = memory_mb(watched)
    return {
        "quiet": quiet.__dict__,
        "storm": during.__dict__,
        "p95_ratio": during.p95_s / quiet.p95_s,
        "storm_report": storm_report,
        "memory_mb": {"before": memory_before, "end_of_storm": memory_end, "after": memory_after},
        "memory_ratio": {name: memory_after[name] / memory_before[name] for name in memory_before},
        "ingress_replicas_after": len(run.processes("ServeReplica:mt5:Ingress")),
        "proxy_connections": {"before": connections_before, "after": proxy_connections(run)},
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    from bench.lib.checkpoint import model_for_run  # torch: imported when a run starts

    model = model_for_run(args.model, args.quick, log)
    windows = (3.0, 15.0, 10.0) if args.quick else (10.0, 60.0, 60.0)
    workdir = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    out: dict[str, Any] = {
        **run_header("storm", getattr(args, "argv", [])),
        "model": results.relative(model),
        "clients": args.clients,
        "slow": SLOW,
        "abandoned_clients": ABANDONED,
        "windows_s": list(windows),
        "fronts": {},
    }
    for front in ("nginx", "direct"):
        run = ServeRun(shipped_config(free_port()), workdir / front, env={"MT5_MODEL": model})
        run.start(timeout_s=600)
        try:
            asyncio.run(warm_up(run.url, classify_workload()))
            if front == "nginx":
                log("through nginx (cluster/nginx) in front of Serve's proxy ...")
                with nginx_in_front_of([f"127.0.0.1:{run.port}"]) as url:
                    out["fronts"][front] = through(url, run, args.clients, windows)
            else:
                log("straight at Serve's proxy (serve run on a laptop, no load balancer) ...")
                out["fronts"][front] = through(run.url, run, args.clients, windows)
        finally:
            run.stop()
    section = markdown(out)
    path = results.save("storm", out, section, out_dir=args.out, page=results.page_for(args.out, args.quick))
    log(f"wrote {results.relative(path)}")
    print(section)
    return out


def markdown(out: dict[str, Any]) -> str:
    fronts = out["fronts"]
    names = {"nginx": "through nginx (cluster/nginx)", "direct": "straight at Serve's proxy"}
    latency = []
    memory = []
    notes = []
    for front, got in fronts.items():
        quiet, during, report = got["quiet"], got["storm"], got["storm_report"]
        latency.append(
            f"| {names[front]} | {quiet['p50_s'] * 1000:.0f} / {quiet['p95_s'] * 1000:.0f} ms | "
            f"{during['p50_s'] * 1000:.0f} / {during['p95_s'] * 1000:.0f} ms | **{got['p95_ratio']:.2f}x** | "
            f"{during['errors']} |"
        )
        for name in got["memory_mb"]["before"]:
            mb = got["memory_mb"]
            memory.append(
                f"| {names[front]} | {name} | {mb['before'][name]:.0f} | {mb['end_of_storm'][name]:.0f} | "
                f"{mb['after'][name]:.0f} | {(got['memory_ratio'][name] - 1) * 100:+.1f} % |"
            )
        answers = ", ".join(f"{count} x {status}" for status, count in sorted(report["slow_answers"].items()))
        held = got["proxy_connections"]
        name = names[front][0].upper() + names[front][1:]
        notes.append(
            f"{name}: the slow clients met {answers or 'no answer'}; {report['abandoned']} connections hung up "
            f"mid-body; {report['connect_errors']} refused; Serve's proxy held {held['before']} client connections "
            f"before and {held['after']} after; {got['ingress_replicas_after']} Ingress replica(s) after."
        )
    return "\n".join(
        [
            f"Model `{out['model']}`, the shipped config.yaml; {out['clients']} well-behaved closed-loop /classify "
            f"client(s), {out['windows_s'][1]:.0f} s measured after {out['windows_s'][0]:.0f} s, quiet and then "
            f"beside {out['slow']} clients sending their body a byte a second and {out['abandoned_clients']} sending "
            "half a body, waiting a second and hanging up, each again and again (from a process of their own).",
            "",
            "| well-behaved /classify | quiet p50 / p95 | storm p50 / p95 | p95 storm / quiet (target <= 1.5x) "
            "| errors |",
            "|---|---|---|---|---|",
            *latency,
            "",
            "| | process | MiB before the storm | at its end | a minute after | after / before (target within 10 %) |",
            "|---|---|---|---|---|---|",
            *memory,
            "",
            *notes,
        ]
    )
