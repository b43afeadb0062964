"""The benchmark: baseline vs the Ray Serve app, same checkpoint, same closed-loop load.

    .venv/bin/python -m bench.run                       # full run (about 10 minutes on the 2-core box)
    .venv/bin/python -m bench.run --duration 5 --warmup 2 --concurrency 1 8   # a quick look

1. builds (once, cached) an mT5-base-shaped checkpoint with random weights in the ModelScope
   layout (bench/checkpoint.py) and uses it through the normal model spec (its directory);
2. starts the baseline (bench/baseline_server.py), drives /classify and /augment at each
   concurrency, records its peak RSS, stops it;
3. starts the Serve app (`serve run` on config.yaml with MT5_MODEL=<checkpoint>), does the
   same, records the ModelReplica worker's peak RSS, stops it;
4. writes bench/results/bench.{json,csv,png} and the results section of BENCHMARKS.md.

Systems run one after the other, never together, so neither steals the other's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import loadgen, procs, report
from bench.workloads import augment_workload, classify_workload, mixed_workload

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- systems
class BaselineProcess:
    name = "baseline"

    def __init__(self, model: str, workdir: Path, threads: int | None = None, port: int | None = None) -> None:
        from tests.servers import free_port

        self.model = model
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "baseline.log"
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout_s: float = 300) -> None:
        command = [sys.executable, "-m", "bench.baseline_server", "--model", self.model, "--port", str(self.port)]
        if self.threads:
            command += ["--threads", str(self.threads)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.info = _wait_healthy(self.url, self.process, timeout_s, self.log_path)

    @property
    def model_pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    @property
    def root_pid(self) -> int | None:
        return self.process.pid if self.process else None

    def idle(self, timeout_s: float = 120) -> None:
        """Wait until no request is being computed (abandoned queued requests are skipped by the server)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if not httpx.get(f"{self.url}/stats", timeout=5, trust_env=False).json()["busy"]:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    def rows_histogram(self) -> dict[str, int] | None:
        return None  # one request at a time: no batch to count

    def describe(self) -> str:
        return (
            f"bench/baseline_server.py: FastAPI + uvicorn, one process, transformers `generate` per request, "
            f"one request at a time, {self.info.get('dtype', 'float32')}, torch threads {self.info.get('torch_threads', '?')}"
        )

    def stop(self) -> None:
        procs.stop_group(self.process)


class ServeProcess:
    name = "serve"

    def __init__(
        self,
        model: str,
        workdir: Path,
        args: dict[str, Any],
        overrides: dict[str, dict[str, Any]],
        patches: list[Path] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        from tests.servers import ServeRun, free_port, test_config

        self.args = args
        self.overrides = overrides
        self.patches = list(patches or [])
        self.tree = patched_tree(self.patches, workdir) if self.patches else None
        env = {"MT5_MODEL": model, **(env or {})}  # env: extra variables for serve run (Ray's runtime switches)
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)  # Serve's workers import serve_app from the patched copy
        self.run = ServeRun(test_config(free_port(), overrides, args), workdir, env=env)
        self.url = self.run.url
        self.log_path = self.run.log_path
        self.info: dict[str, Any] = {}

    def start(self, timeout_s: float = 300) -> None:
        import tests.servers as servers

        root = servers.ROOT
        if self.tree is not None:
            servers.ROOT = self.tree  # `serve run` starts in (and imports the app from) the patched copy
        try:
            self.run.start(timeout_s=timeout_s)
        finally:
            servers.ROOT = root
        self.info = httpx.get(f"{self.url}/healthz", timeout=10, trust_env=False).json()

    @property
    def model_pids(self) -> list[int]:
        if self.run.process is None:
            return []
        return procs.find_replica_pids(self.run.process.pid)

    def idle(self, timeout_s: float = 0) -> None:
        # Serve cancels abandoned requests (their rows leave the batch at the next step); the scheduler then
        # goes idle and logs its summary, which reaches serve run's output a moment later.
        time.sleep(3.0)

    def rows_histogram(self) -> dict[str, int] | None:
        """The schedulers' cumulative rows-per-step histogram: the last summary line of each replica's lane, summed."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        last: dict[str, str] = {}
        for pid, lane, histogram in re.findall(r"pid=(\d+)[^\n]*scheduler(?:\[lane=(\d+)\])?: [^\n]*rows_hist=\{([^}]*)\}", text):
            last[f"{pid}/{lane}"] = histogram
        total: dict[str, int] = {}
        for histogram in last.values():
            for bucket, count in (item.split(":") for item in histogram.split(",") if item):
                total[bucket] = total.get(bucket, 0) + int(count)
        return total

    @property
    def root_pid(self) -> int | None:
        return self.run.process.pid if self.run.process else None

    def describe(self) -> str:
        user_config = self.run.config["applications"][0]["deployments"][0].get("user_config")
        patched = f" with {', '.join(f'`{p}`' for p in self.patches)} applied to a copy of the tree," if self.patches else ""
        return (
            f"`serve run` on config.yaml (MT5_MODEL=<checkpoint>),{patched} app args changed: {json.dumps(self.args) if self.args else 'none'}, "
            f"deployment overrides: {json.dumps(self.overrides) if self.overrides else 'none'}; ModelReplica user_config {json.dumps(user_config)}; "
            f"/classify in its default mode (score); model {self.info.get('dtype', '?')} on {self.info.get('device', '?')}"
        )

    def stop(self) -> None:
        self.run.stop()


def patched_tree(patches: list[Path], workdir: Path) -> Path:
    """A copy of the repository (sources only) with `patches` applied (patch -p1), for trying a proposal."""
    tree = workdir / "patched-tree"
    ignore = shutil.ignore_patterns(".venv", ".git", "results", "test-output", "__pycache__", "*.egg-info", "node_modules")
    shutil.copytree(ROOT, tree, ignore=ignore)
    for patch in patches:
        subprocess.run(["patch", "-p1", "--forward", "-i", str(Path(patch).resolve())], cwd=tree, check=True, capture_output=True)
    return tree


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float, log_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
        try:
            response = httpx.get(f"{url}/healthz", timeout=2, trust_env=False)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    procs.stop_group(process)
    raise TimeoutError(f"{url} not healthy within {timeout_s} s:\n{log_path.read_text(errors='replace')[-4000:]}")


# ---------------------------------------------------------------- driver
def machine_description() -> dict[str, Any]:
    import torch

    model_name, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model_name == "?":
                model_name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cores = os.cpu_count()
    try:
        mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        mem_gib = 0.0
    amx = "AMX" if "amx_bf16" in flags else "no AMX exposed"
    bf16 = "avx512_bf16" if "avx512_bf16" in flags else "no avx512_bf16"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    description = f"{cores}-core {model_name} ({torch.backends.cpu.get_cpu_capability()}, {amx}, {bf16}), {mem_gib:.0f} GiB, {gpu}"
    return {
        "description": description,
        "cores": cores,
        "cpu": model_name,
        "amx": "amx_bf16" in flags,
        "memory_gib": round(mem_gib, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def build_workloads(names: list[str], augment_n: int, augment_max_length: int) -> dict[str, Any]:
    makers = {
        "classify": lambda: classify_workload(),
        "augment": lambda: augment_workload(num_return_sequences=augment_n, max_length=augment_max_length),
        "mixed": lambda: mixed_workload(),
    }
    return {name: makers[name]() for name in names}


def bench_system(system, workloads: dict[str, Any], args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    points: list[dict[str, Any]] = []
    started = time.monotonic()
    log(f"starting {system.name} ...")
    system.start()
    startup_s = time.monotonic() - started
    log(f"{system.name} healthy after {startup_s:.0f} s: {system.info}")
    info: dict[str, Any] = {"startup_s": round(startup_s, 1)}
    try:
        for name, workload in workloads.items():
            for part, _ in workload if name == "mixed" else [(workload, 1)]:
                asyncio.run(loadgen.warm_up(system.url, part))
        pids = system.model_pids
        log(f"{system.name} model process(es): {pids}")
        system.idle()  # the warm-up's scheduler summary reaches the log before the first point's snapshot
        rows_seen = system.rows_histogram()
        for name, workload in workloads.items():
            if name == "mixed":
                if system.name not in args.mixed_systems:
                    continue
                runs = [(workload, None)]
            else:
                runs = [([(workload, concurrency)], concurrency) for concurrency in args.concurrency]
            for mix, _ in runs:
                warmup, duration = (args.warmup, args.duration) if name == "classify" else (args.augment_warmup, args.augment_duration)
                measured = _measured_points(
                    system, pids,
                    loadgen.run_mix(system.url, mix, system=system.name, duration_s=duration, warmup_s=warmup, drain_s=args.drain),
                )
                system.idle()
                rows_now = system.rows_histogram()
                for point in measured:
                    if rows_now is not None:
                        point["rows_per_step"] = _histogram_delta(rows_now, rows_seen)
                    points.append(point)
                    log(
                        f"{system.name:8s} {point['workload']:15s} c={point['concurrency']:<3d} {point['rps']:7.2f} req/s  p50 {_s(point['p50_s'])}  "
                        f"p95 {_s(point['p95_s'])}  ok {point['ok']} err {point['errors']}  rss {_s(point['peak_rss_mb'], 0)} MiB  "
                        f"cpu: model {_s(point['model_cpu_cores'], 2)} system {_s(point['system_cpu_cores'], 2)} client {_s(point['client_cpu_cores'], 2)}  "
                        f"load {point['load_average']:.1f}" + (f"  rows/step {point.get('rows_per_step')}" if point.get("rows_per_step") else "")
                    )
                rows_seen = rows_now
        pids = system.model_pids or pids
        peaks = [peak for peak in (procs.peak_rss_mb(pid) for pid in pids) if peak is not None]
        info.update(
            {
                "description": system.describe(),
                "health": system.info,
                "model_pids": pids,
                "replicas": len(pids),
                "replica_peak_rss_mb": max(peaks) if peaks else None,
            }
        )
        if pids:
            # Ray sets OMP_NUM_THREADS to an actor's num_cpus, which caps torch's threads in the replica.
            info["model_process_omp_num_threads"] = procs.environ(pids[0]).get("OMP_NUM_THREADS")
    finally:
        log(f"stopping {system.name}")
        system.stop()
    return points, info


def _measured_points(system, pids: list[int], load) -> list[dict[str, Any]]:
    """Run one load coroutine (one or several closed loops) and attach CPU, memory and load figures to each result."""
    cpu_before = {pid: procs.cpu_seconds(pid) for pid in pids}
    system_pids = [system.root_pid, *procs.descendants(system.root_pid)]
    system_before = {pid: procs.cpu_seconds(pid) for pid in system_pids}
    client_before = time.process_time()
    wall_before = time.monotonic()
    results = asyncio.run(load)
    wall = time.monotonic() - wall_before
    system_used = [after - before for pid, before in system_before.items() if before is not None and (after := procs.cpu_seconds(pid)) is not None]
    used = [after - before for pid, before in cpu_before.items() if before is not None and (after := procs.cpu_seconds(pid)) is not None]
    peaks = [peak for peak in (procs.peak_rss_mb(pid) for pid in (system.model_pids or pids)) if peak is not None]
    points = []
    for point in results:
        point.client_cpu_cores = (time.process_time() - client_before) / wall
        point.system_cpu_cores = sum(system_used) / wall if system_used else None
        point.model_cpu_cores = sum(used) / wall if used else None
        point.peak_rss_mb = max(peaks) if peaks else None
        point.load_average = round(os.getloadavg()[0], 2)
        points.append(point.as_dict())
    return points


def _histogram_delta(now: dict[str, int], before: dict[str, int] | None) -> dict[str, int]:
    before = before or {}
    delta = {bucket: count - before.get(bucket, 0) for bucket, count in now.items()}
    return {bucket: count for bucket, count in delta.items() if count > 0}


def serve_dtype(serve_args: dict[str, Any]) -> str:
    """The dtype Serve's ModelReplica runs on this machine with these app args (`auto` resolved)."""
    from serve_app.engine.loading import choose_device
    from serve_app.engine.precision import choose_precision

    return choose_precision(serve_args.get("dtype", "auto"), choose_device("auto")).name


def ceiling_command(model: str, workload: str, batch: int, args: argparse.Namespace, dtype: str) -> list[str]:
    """bench.ceiling's command line for the engine as Serve's ModelReplica runs it: the same dtype, lanes and torch threads."""
    command = [
        sys.executable, "-m", "bench.ceiling", "--model", model, "--workload", workload, "--batch", str(batch),
        "--repeats", str(args.ceiling_repeats), "--n", str(args.augment_n), "--max-length", str(args.augment_max_length), "--dtype", dtype,
        # the same lanes as Serve's ModelReplica: the ceiling is the engine's best on the same split of the work
        "--lanes", str(args.serve_args.get("scheduler_lanes", "auto")),
    ]
    if args.serve_args.get("torch_threads"):  # and the same torch threads, where Serve's are set
        command += ["--threads", str(args.serve_args["torch_threads"])]
    return command


def engine_ceiling(model: str, workloads: list[str], batch: int, args: argparse.Namespace, dtype: str) -> dict[str, dict[str, Any]]:
    """bench.ceiling in a fresh process per workload (alone on the machine, like each system)."""
    results = {}
    for workload in workloads:
        log(f"engine ceiling: {workload}, batch {batch}, {dtype} ...")
        done = subprocess.run(ceiling_command(model, workload, batch, args, dtype), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, check=True)
        results[workload] = json.loads(done.stdout.strip().splitlines()[-1])
        log(f"engine ceiling: {workload} {results[workload]['requests_per_s']:.2f} req/s (best {results[workload]['best_requests_per_s']:.2f}, {results[workload]['lanes']} lane(s))")
    return results


def ceiling_points(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], batch: int, repeats: int) -> list[dict[str, Any]]:
    """The engine ceiling measured just before and just after Serve ran, averaged: the shared box drifts by
    +-20 % over minutes, and a ceiling taken at another time than Serve's run would skew the ratio."""
    points = []
    for workload, first in before.items():
        second = after.get(workload, first)
        rps = (first["requests_per_s"] + second["requests_per_s"]) / 2
        points.append({
            "system": "engine", "workload": workload, "concurrency": batch, "rps": rps, "rps_spread": rps, "ok": 2 * batch * repeats,
            "errors": 0, "p50_s": None, "p95_s": None, "p99_s": None, "little_latency_s": None,
            "ceiling": {"before_serve": first, "after_serve": second},
        })
    return points


def _s(value: float | None, digits: int = 2) -> str:
    return "   –" if value is None else f"{value:.{digits}f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the Serve app against a one-at-a-time transformers baseline.")
    parser.add_argument("--model", default=None, help="model spec for both systems (default: build/reuse the mT5-base-shaped random checkpoint)")
    parser.add_argument("--checkpoint-dir", default=None, help="where the random checkpoint is built (default ~/.cache/mt5-serve/bench-mt5-base)")
    parser.add_argument("--systems", nargs="+", default=["baseline", "serve"], choices=["baseline", "serve"])
    parser.add_argument("--workloads", nargs="+", default=["classify", "augment", "mixed"], choices=["classify", "augment", "mixed"])
    parser.add_argument("--mixed-systems", nargs="+", default=["serve"], choices=["baseline", "serve"], help="systems that run the mixed workload")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the engine-only ceiling (bench.ceiling)")
    parser.add_argument("--ceiling-repeats", type=int, default=3, help="batches timed per workload for the engine-only ceiling (before and after Serve)")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per classify point")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each classify point's window")
    parser.add_argument("--augment-duration", type=float, default=80.0, help="measured seconds per augment point (a 32-client cycle takes ~8-12 s here)")
    parser.add_argument("--augment-warmup", type=float, default=10.0, help="unmeasured seconds before each augment point's window")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds in-flight requests may finish after a window")
    parser.add_argument("--serve-patch", type=Path, action="append", default=[], help="run Serve from a copy of the tree with this patch applied (repeatable)")
    parser.add_argument("--augment-n", type=int, default=2, help="num_return_sequences of the augment workload")
    parser.add_argument("--augment-max-length", type=int, default=32, help="max_length (new tokens) of the augment workload")
    parser.add_argument("--baseline-threads", type=int, default=None, help="torch threads of the baseline (default: torch's, one per core)")
    parser.add_argument("--serve-args", type=json.loads, default={}, help='JSON merged into config.yaml app args, e.g. \'{"torch_threads": 2}\'')
    parser.add_argument("--serve-user-config", type=json.loads, default=None, help="JSON for ModelReplica's user_config (batching knobs)")
    parser.add_argument("--serve-overrides", type=json.loads, default={}, help="JSON {deployment: {option: value}} merged into config.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for json/csv/png")
    parser.add_argument("--stem", default="bench", help="file name stem of the results")
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown file whose results section is rewritten")
    parser.add_argument("--no-md", action="store_true", help="do not touch the markdown file")
    parser.add_argument("--logs", type=Path, default=None, help="where server logs go (default bench/results/raw/<time>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = ".venv/bin/python -m bench.run" + ("" if argv is None and len(sys.argv) <= 1 else " " + shlex.join(argv if argv is not None else sys.argv[1:]))
    date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    logs = args.logs or (RESULTS_DIR / "raw" / time.strftime("%Y%m%d-%H%M%S"))
    logs.mkdir(parents=True, exist_ok=True)

    if args.model:
        model = args.model
        checkpoint = {"path": model, "description": f"`{model}`"}
    else:
        from bench.checkpoint import build_checkpoint

        path = build_checkpoint(args.checkpoint_dir, log=log)
        model = str(path)
        weights = path / "pytorch_model.bin"
        checkpoint = {
            "path": model,
            "weights_mb": weights.stat().st_size / 2**20,
            "description": (
                f"mT5-base shapes (d_model 768, 12+12 layers, 12 heads, d_ff 2048, vocabulary 250,112, untied lm_head), "
                f"random weights, ModelScope layout ({weights.stat().st_size / 2**30:.2f} GiB pytorch_model.bin + config.json + "
                f"the demo's sentencepiece tokenizer), loaded from its directory `{path}`"
            ),
        }
    if "weights_mb" not in checkpoint:
        from serve_app.engine.spec import resolve_spec

        files = [f for f in resolve_spec(model).path.iterdir() if f.name in ("pytorch_model.bin", "model.safetensors")]
        if files:
            checkpoint["weights_mb"] = files[0].stat().st_size / 2**20

    workloads = build_workloads(args.workloads, args.augment_n, args.augment_max_length)
    per_system = sum(
        (args.augment_warmup + args.augment_duration if name == "augment" else args.warmup + args.duration) for name in workloads if name != "mixed"
    ) * len(args.concurrency) + (args.augment_warmup + args.augment_duration if "mixed" in workloads else 0)
    log(f"{len(args.systems)} systems x {len(workloads)} workloads x {len(args.concurrency)} concurrencies: at least {len(args.systems) * per_system / 60:.1f} min (+ start-up, drains)")
    overrides = dict(args.serve_overrides)
    if args.serve_user_config is not None:
        overrides.setdefault("ModelReplica", {})["user_config"] = args.serve_user_config

    results: dict[str, Any] = {
        "title": "mT5-base-shaped model: Ray Serve app vs one-at-a-time transformers baseline",
        "date": date,
        "command": command,
        "machine": machine_description(),
        "checkpoint": checkpoint,
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "augment_duration_s": args.augment_duration,
            "augment_warmup_s": args.augment_warmup,
            "serve_patches": [str(p) for p in args.serve_patch],
            "drain_s": args.drain,
            "concurrency": args.concurrency,
            "workloads": {
                "classify": "6 labels (体育,财经,科技,娱乐,教育,健康), Chinese texts of 20-80 characters",
                "augment": f"the same texts, num_return_sequences {args.augment_n}, max_length {args.augment_max_length}",
                "mixed": "1 classify client while 8 augment clients (num_return_sequences 2, max_length 64) run",
            },
            "serve_args": args.serve_args,
            "serve_overrides": overrides,
        },
        "systems": {},
        "points": [],
        "notes": [
            "Random weights: no model emits </s> early, so every augment answer runs all max_length steps on both systems; "
            "the baseline's classify generation is capped at the longest label + 1 tokens (what a trained model needs).",
            "The machine is shared with other work: compare the two systems within this run, as ratios.",
        ],
    }
    ceilings: list[dict[str, dict[str, Any]]] = []
    ceiling_workloads = [name for name in ("classify", "augment") if name in workloads]

    def measure_ceiling() -> None:
        if not args.no_ceiling and "serve" in args.systems:
            ceilings.append(engine_ceiling(model, ceiling_workloads, max(args.concurrency), args, serve_dtype(args.serve_args)))

    with tempfile.TemporaryDirectory(prefix="bench-", dir=logs) as scratch:
        for name in args.systems:
            if name == "serve":
                measure_ceiling()
            if name == "baseline":
                system = BaselineProcess(model, logs, threads=args.baseline_threads)
            else:
                system = ServeProcess(model, Path(scratch), args.serve_args, overrides, args.serve_patch)
            try:
                points, info = bench_system(system, workloads, args)
            finally:
                if name == "serve" and system.log_path.exists():
                    (logs / "serve-run.log").write_bytes(system.log_path.read_bytes())
            results["points"] += points
            results["systems"][name] = info
            if name == "serve":
                measure_ceiling()

    if ceilings:
        results["points"] += ceiling_points(ceilings[0], ceilings[-1], max(args.concurrency), args.ceiling_repeats)
    results["targets"] = report.evaluate_targets(results)
    paths = report.write_files(results, args.out, args.stem)
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    if not args.no_md:
        image = os.path.relpath(paths["png"], args.md.resolve().parent)
        report.update_section(args.md, "bench-run", report.markdown(results, image=image), "Baseline vs Serve (bench.run)")
        log(f"updated {args.md}")
    for target in results["targets"]:
        log(f"target: {target['target']}: {target['measured']} -> {target['met']}")
    return results


if __name__ == "__main__":
    main()
