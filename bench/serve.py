"""The service as a user runs it (`serve run config.yaml`) against a one-at-a-time server, over HTTP.

    .venv/bin/python -m bench serve                       # baseline and the service, 1/8/32 clients, mixed, p95 sweep
    .venv/bin/python -m bench serve --against v0.1.0      # and an earlier release of the service, side by side
    .venv/bin/python -m bench serve --quick               # a minute on the demo model (not results; the page is left
    alone)

Systems run one after the other, never together, so none steals another's cores:

- baseline: one process, FastAPI + uvicorn, transformers `generate` per request, float32, one
  request at a time (bench/lib/baseline.py): how this model is usually served;
- serve: the shipped config.yaml under `serve run`, only the model spec changed (the benchmark
  checkpoint, or --model);
- serve@REF (with --against): the same, from a checkout of REF (a tag or commit), so a change is
  measured against the release before it on the same box in one run.

Load: closed loop, N clients each sending its next request when the last one answered
(bench/lib/loadgen.py; workloads in bench/lib/workloads.py). The p95 sweep raises the number of
/classify clients until the 95th percentile reaches a second: the seed article's figure of merit.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.lib import loadgen, processes, results
from bench.lib.machine import log as _log
from bench.lib.machine import run_header
from bench.lib.revisions import checkout
from bench.lib.serve_run import ROOT, ServeRun, free_port, shipped_config
from bench.lib.workloads import augment_workload, classify_workload, mixed_workload

P95_LIMIT_S = 1.0  # the seed's concurrency figure: the most clients served with p95 under a second
# Request indices per measured point (each point starts a block of its own, so no text is sent twice).
INDEX_BLOCK = 1_000_000
WINDOWS = {  # seconds: (warm-up, measured) per point; augment cycles take 8-12 s at 32 clients on 2 cores
    "full": {"classify": (5.0, 20.0), "augment": (10.0, 60.0), "sweep": (3.0, 15.0), "drain": 15.0, "settle": 3.0},
    "quick": {"classify": (0.5, 2.0), "augment": (0.5, 3.0), "sweep": (0.5, 2.0), "drain": 5.0, "settle": 0.5},
}


def log(message: str) -> None:
    _log("serve", message)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model spec for every system (default: the mT5-base-shaped benchmark checkpoint; demo with --quick)",
    )
    parser.add_argument("--systems", nargs="+", default=["baseline", "serve"], choices=["baseline", "serve"])
    parser.add_argument(
        "--against",
        default=None,
        metavar="REF",
        help="also run the service from this git tag or commit (an earlier release)",
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        default=["classify", "augment", "mixed", "sweep"],
        choices=["classify", "augment", "mixed", "sweep"],
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument(
        "--sweep-clients",
        nargs="+",
        type=int,
        default=[1, 2, 4, 6, 8, 12, 16, 24, 32],
        help="/classify clients tried, in order, until p95 reaches 1 s",
    )
    parser.add_argument("--augment-n", type=int, default=2, help="num_return_sequences of the augment workload")
    parser.add_argument(
        "--augment-max-length", type=int, default=32, help="max_length (new tokens) of the augment workload"
    )
    parser.add_argument(
        "--serve-env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="environment for serve run (e.g. MT5_DTYPE=float32)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="seconds-long windows on the demo model: a smoke run, not results"
    )
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR, help="folder for serve.json / serve.png")


def main(args: argparse.Namespace) -> dict[str, Any]:
    windows = WINDOWS["quick" if args.quick else "full"]
    from bench.lib.checkpoint import model_for_run  # torch: imported when a run starts

    model = model_for_run(args.model, args.quick, log)
    out: dict[str, Any] = {
        **run_header("serve", getattr(args, "argv", [])),
        "model": results.relative(model) if model != "demo" else model,
        "windows_s": windows,
        "quick": args.quick,
        "systems": {},
        "points": [],
    }
    workloads = {
        "classify": classify_workload(),
        "augment": augment_workload(num_return_sequences=args.augment_n, max_length=args.augment_max_length),
    }
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        systems: list[Any] = []
        if "baseline" in args.systems:
            systems.append(BaselineProcess(model, Path(scratch) / "baseline"))
        if "serve" in args.systems:
            systems.append(ServeProcess("serve", model, Path(scratch) / "serve", ROOT, args.serve_env))
        if args.against:
            tree = checkout(args.against, Path(scratch) / "against-tree")
            systems.append(
                ServeProcess(f"serve@{args.against}", model, Path(scratch) / "against", tree, args.serve_env)
            )
        for system in systems:
            points, info = bench_system(system, workloads, args, windows)
            out["points"] += points
            out["systems"][system.name] = info
    out["ratios"] = ratios(out["points"], list(out["systems"]))
    section = markdown(out)
    if args.quick:
        path = results.save("serve-quick", out, section, out_dir=args.out, page=None)
    else:
        path = results.save("serve", out, section, out_dir=args.out, page=results.page_for(args.out))
        plot(out, args.out / "serve.png")
    log(f"wrote {results.relative(path)}")
    print(section)
    return out


# ---------------------------------------------------------------- systems
class BaselineProcess:
    def __init__(self, model: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = "baseline"
        self.model = model
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / "baseline.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout_s: float = 300) -> None:
        port = self.url.rsplit(":", 1)[1]
        command = [sys.executable, "-m", "bench.lib.baseline_server", "--model", self.model, "--port", port]
        self.process = processes.start_group(command, self.log_path, ROOT, {**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    "the baseline exited with "
                    f"{self.process.returncode}:\n{self.log_path.read_text(errors='replace')[-4000:]}"
                )
            try:
                response = httpx.get(f"{self.url}/healthz", timeout=2, trust_env=False)
                if response.status_code == 200:
                    self.info = response.json()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the baseline was not healthy within {timeout_s} s")

    @property
    def model_pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def settle(self, seconds: float) -> None:
        """Wait until no request is being computed (abandoned queued requests are skipped by the server)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if not httpx.get(f"{self.url}/stats", timeout=5, trust_env=False).json()["busy"]:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    def describe(self) -> str:
        return (
            "one process, FastAPI + uvicorn, transformers `generate` per request, one request at a time, "
            f"{self.info.get('dtype', 'float32')}, {self.info.get('torch_threads', '?')} torch threads"
        )

    def stop(self) -> None:
        processes.stop_group(self.process)


class ServeProcess:
    def __init__(self, name: str, model: str, workdir: Path, tree: Path, env: list[str]) -> None:
        self.name = name
        extra = dict(item.split("=", 1) for item in env)
        self.run = ServeRun(
            shipped_config(free_port(), config_path=tree / "config.yaml"),
            workdir,
            env={"MT5_MODEL": model, **extra},
            tree=tree,
        )
        self.url = self.run.url
        self.info: dict[str, Any] = {}

    def start(self, timeout_s: float = 300) -> None:
        self.run.start(timeout_s=timeout_s)
        self.info = httpx.get(f"{self.url}/healthz", timeout=10, trust_env=False).json()

    @property
    def model_pids(self) -> list[int]:
        return processes.find_replica_pids(self.run.process.pid) if self.run.process else []

    def settle(self, seconds: float) -> None:
        time.sleep(seconds)  # abandoned requests are cancelled and leave the batch at the next step

    def describe(self) -> str:
        return (
            "`serve run` on "
            f"{'this checkout' if self.run.tree == ROOT else 'a checkout of ' + self.name.split('@')[1]}'s "
            f"config.yaml, model {self.info.get('dtype', '?')} on {self.info.get('device', '?')} "
            f"({self.info.get('dtype_reason', '')})"
        )

    def stop(self) -> None:
        self.run.stop()


# ---------------------------------------------------------------- driver
def bench_system(
    system, workloads: dict[str, Any], args: argparse.Namespace, windows: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    log(f"starting {system.name} ...")
    started = time.monotonic()
    system.start()
    info: dict[str, Any] = {"startup_s": round(time.monotonic() - started, 1)}
    log(f"{system.name} healthy after {info['startup_s']:.0f} s")
    points: list[dict[str, Any]] = []
    try:
        for workload in workloads.values():
            asyncio.run(loadgen.warm_up(system.url, workload))
        pids = system.model_pids
        calls = itertools.count(1)

        def measure(mix: list[tuple[Any, int]], window: tuple[float, float]) -> list[dict[str, Any]]:
            warmup, duration = window
            measured = _measured(
                pids,
                loadgen.run_mix(
                    system.url,
                    mix,
                    system=system.name,
                    duration_s=duration,
                    warmup_s=warmup,
                    drain_s=windows["drain"],
                    # Each point its own texts: a text an earlier point sent is answered by the classification cache.
                    first_index=next(calls) * INDEX_BLOCK,
                ),
            )
            system.settle(windows["settle"])
            for point in measured:
                log(
                    f"{system.name:12s} {point['workload']:15s} c={point['concurrency']:<3d} "
                    f"{point['rps_spread']:7.2f} req/s  "
                    f"p50 {_s(point['p50_s'])}  p95 {_s(point['p95_s'])}  ok {point['ok']} err {point['errors']}"
                )
            return measured

        for name in ("classify", "augment"):
            if name in args.workloads:
                for clients in args.concurrency:
                    points += measure([(workloads[name], clients)], windows[name])
        if "mixed" in args.workloads and system.name != "baseline":
            points += measure(mixed_workload(), windows["augment"])
        if "sweep" in args.workloads:
            for clients in args.sweep_clients:
                [point] = measure([(workloads["classify"], clients)], windows["sweep"])
                point["workload"] = "sweep:classify"
                points.append(point)
                if point["p95_s"] is None or point["p95_s"] >= P95_LIMIT_S:
                    break
        peaks = [peak for peak in (processes.peak_rss_mb(pid) for pid in system.model_pids or pids) if peak is not None]
        health = {
            **system.info,
            **({"model": results.relative(system.info["model"])} if "/" in str(system.info.get("model", "")) else {}),
        }
        info.update(
            {"description": system.describe(), "health": health, "model_peak_rss_mb": max(peaks) if peaks else None}
        )
    finally:
        log(f"stopping {system.name}")
        system.stop()
    return points, info


def _measured(pids: list[int], load) -> list[dict[str, Any]]:
    """Run one load (one or several closed loops) and add the model process's CPU to each point."""
    before = {pid: processes.cpu_seconds(pid) for pid in pids}
    wall = time.monotonic()
    measured = asyncio.run(load)
    wall = time.monotonic() - wall
    used = [
        after - start
        for pid, start in before.items()
        if start is not None and (after := processes.cpu_seconds(pid)) is not None
    ]
    points = []
    for point in measured:
        point.model_cpu_cores = sum(used) / wall if used else None
        point.load_average = round(os.getloadavg()[0], 2)
        points.append(point.as_dict())
    return points


def _point(points: list[dict[str, Any]], system: str, workload: str, clients: int) -> dict[str, Any] | None:
    return next(
        (p for p in points if p["system"] == system and p["workload"] == workload and p["concurrency"] == clients), None
    )


def most_clients_under(points: list[dict[str, Any]], system: str, limit_s: float = P95_LIMIT_S) -> int | None:
    """The most /classify clients whose p95 stayed under `limit_s` in the sweep (None: not swept)."""
    swept = [p for p in points if p["system"] == system and p["workload"] == "sweep:classify"]
    if not swept:
        return None
    under = [p["concurrency"] for p in swept if p["p95_s"] is not None and p["p95_s"] < limit_s]
    return max(under, default=0)


def ratios(points: list[dict[str, Any]], systems: list[str]) -> list[dict[str, Any]]:
    """Every service against the baseline, and this checkout against an earlier release, per workload and clients."""
    pairs = [(s, "baseline") for s in systems if s != "baseline" and "baseline" in systems]
    pairs += [("serve", s) for s in systems if s.startswith("serve@") and "serve" in systems]
    out = []
    for ours, theirs in pairs:
        for point in points:
            if point["system"] != ours or point["workload"] not in ("classify", "augment"):
                continue
            other = _point(points, theirs, point["workload"], point["concurrency"])
            if other and other["rps_spread"] > 0:
                out.append(
                    {
                        "system": ours,
                        "against": theirs,
                        "workload": point["workload"],
                        "clients": point["concurrency"],
                        "throughput_x": point["rps_spread"] / other["rps_spread"],
                        "p95_x": point["p95_s"] / other["p95_s"] if point["p95_s"] and other["p95_s"] else None,
                    }
                )
    return out


def markdown(out: dict[str, Any]) -> str:
    windows = out["windows_s"]
    lines = [f"Model: `{out['model']}`. Systems, each alone on the machine:", ""]
    for name, info in out["systems"].items():
        lines.append(
            f"- **{name}**: {info.get('description', '')}; started in {info['startup_s']:.0f} s; model process peak "
            "RSS "
            f"{_s(info.get('model_peak_rss_mb'), 0)} MiB"
        )
    lines += [
        "",
        f"Per point {windows['classify'][0]:g} + {windows['classify'][1]:g} s (classify) and {windows['augment'][0]:g} "
        f"+ {windows['augment'][1]:g} s "
        "(augment, mixed) of warm-up + measurement. req/s spreads each answer over its lifetime (clients that finish "
        "together answer in "
        "bursts); latencies are over the answers inside the window; CPU is the model process's, out of the machine's "
        "cores. "
        "classify: 6 labels, Chinese texts of 20-80 characters; augment: the same texts, 2 sequences x 32 new tokens; "
        "mixed: 1 classify client among 8 augment clients (2 x 64 tokens).",
        "",
        "| workload | clients | system | req/s | p50 s | p95 s | answers | errors | model CPU cores |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in out["points"]:
        if p["workload"].startswith("sweep"):
            continue
        lines.append(
            f"| {p['workload']} | {p['concurrency']} | {p['system']} | {p['rps_spread']:.2f} | {_s(p['p50_s'])} | "
            f"{_s(p['p95_s'])} | "
            f"{p['ok']} | {p['errors']} | {_s(p.get('model_cpu_cores'), 1)} |"
        )
    if out["ratios"]:
        lines += [
            "",
            "Side by side, same run:",
            "",
            "| system | against | workload | clients | req/s | p95 |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r in out["ratios"]:
            p95 = f"{r['p95_x']:.2f}x" if r["p95_x"] is not None else "–"
            lines.append(
                f"| {r['system']} | {r['against']} | {r['workload']} | {r['clients']} | **{r['throughput_x']:.2f}x** | "
                f"{p95} |"
            )
    swept = {name: most_clients_under(out["points"], name) for name in out["systems"]}
    if any(value is not None for value in swept.values()):
        lines += [
            "",
            f"Most /classify clients served with p95 under {P95_LIMIT_S:g} s (the seed article reports 12 on an A10G "
            "GPU): " + "; ".join(f"{name} **{value}**" for name, value in swept.items() if value is not None) + ".",
        ]
    if not out["quick"]:
        lines += ["", "![throughput and p95 against clients](bench/results/serve.png)"]
    return "\n".join(lines) + "\n"


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = ["classify", "augment"]
    fig, axes = plt.subplots(len(workloads), 2, figsize=(10, 7), squeeze=False)
    for row, workload in enumerate(workloads):
        for system in out["systems"]:
            series = sorted(
                (p for p in out["points"] if p["workload"] == workload and p["system"] == system),
                key=lambda p: p["concurrency"],
            )
            clients = [p["concurrency"] for p in series]
            axes[row][0].plot(clients, [p["rps_spread"] for p in series], marker="o", label=system)
            axes[row][1].plot(clients, [p["p95_s"] for p in series], marker="o", label=system)
        for column, (title, unit) in enumerate((("throughput", "requests/s"), ("p95 latency", "seconds"))):
            ax = axes[row][column]
            ax.set_title(f"{workload}: {title}")
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(unit)
            ax.set_xscale("log", base=2)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"bench serve, {out['date']}, {out['machine']['description']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
