"""Dataset jobs beside interactive requests: does a running job leave /classify fast, and how fast does it run alone?

    .venv/bin/python -m bench jobs            # the mT5-base-shaped checkpoint, shipped config.yaml (~6 min on 2 cores)
    .venv/bin/python -m bench jobs --quick    # the demo model, a smaller file (not results)

One `serve run` of the shipped config.yaml; one client sends /classify requests one after another
(closed loop, one text, six labels) and its latencies are taken:

- idle: nothing else runs;
- beside a classify job (POST /jobs, background priority in every ModelReplica's scheduler);
- beside `mt5-bulk --url` (background priority too), and beside the same bulk run sent at
  interactive priority: one queue for both, as before jobs had a priority of their own.

Alone, the job's records/s is set against `mt5-bulk --url`'s on the same file and service. Targets
(issue 37): /classify p95 beside a job at most 1.5x its idle p95; the job alone at least 80 % of
mt5-bulk --url's records/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.lib import results
from bench.lib.loadgen import percentile
from bench.lib.machine import log as _log
from bench.lib.machine import run_header
from bench.lib.serve_run import ServeRun, free_port, shipped_config
from bench.lib.workloads import LABELS, chinese_texts

MT5_BULK = Path(sys.executable).parent / "mt5-bulk"


def log(message: str) -> None:
    _log("jobs", message)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model spec (default: the mT5-base-shaped benchmark checkpoint)")
    parser.add_argument("--records", type=int, default=None, help="records in the dataset (default 256; quick 400)")
    parser.add_argument("--quick", action="store_true", help="the demo model: a smoke run, not results")
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR)


class Prober:
    """One closed-loop /classify client on its own thread; latencies between start() and stop()."""

    def __init__(self, url: str, texts: list[str]) -> None:
        self.client = httpx.Client(base_url=url, timeout=120)
        self.texts = texts
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        index = 0
        while not self._stop.is_set():
            # Never the same text twice: a repeat would be answered by the classification cache, not the model.
            body = {"text": f"{self.texts[index % len(self.texts)]}（{index}）", "labels": LABELS}
            started = time.perf_counter()
            response = self.client.post("/classify", json=body)
            if response.status_code == 200:
                self.latencies.append(time.perf_counter() - started)
            else:
                self.failures += 1
            index += 1

    def start(self) -> None:
        self.latencies, self.failures = [], 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return {
            "requests": len(self.latencies),
            "failures": self.failures,
            "p50_s": percentile(self.latencies, 50),
            "p95_s": percentile(self.latencies, 95),
        }


def write_dataset(path: Path, count: int, seed: int = 7) -> None:
    lines = [
        json.dumps({"id": i, "text": text}, ensure_ascii=False) for i, text in enumerate(chinese_texts(count, seed))
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_job(url: str, data: bytes) -> float:
    """A classify job over `data`, start to finish: its records/s (wall time from POST to done)."""
    started = time.perf_counter()
    created = httpx.post(
        f"{url}/jobs",
        files={"file": ("bench.jsonl", data)},
        data={"task": "classify", "params": json.dumps({"labels": LABELS}, ensure_ascii=False)},
        timeout=120,
    )
    created.raise_for_status()
    job_id = created.json()["id"]
    while True:
        state = httpx.get(f"{url}/jobs/{job_id}", timeout=60).json()
        if state["status"] != "queued" and state["status"] != "running":
            break
        time.sleep(0.2)
    if state["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {state['status']}: {state.get('detail')}")
    return state["total"] / (time.perf_counter() - started)


def run_bulk(url: str, dataset: Path, workdir: Path, priority: str) -> float:
    """`mt5-bulk classify --url` over `dataset` (at `priority`): records/s, as it reports them."""
    output = workdir / f"bulk-{priority}-{time.monotonic_ns()}.jsonl"
    if priority == "background":
        command = [str(MT5_BULK), "classify", str(dataset), str(output), "--labels", ",".join(LABELS), "--url", url]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ}, timeout=3600)
        return sum(1 for _ in dataset.open(encoding="utf-8")) / (time.perf_counter() - started)
    # The same run at interactive priority: mt5-bulk's own code with the header it sent before jobs existed.
    from serve_app.bulk.http_runner import HttpRunner
    from serve_app.bulk.job import run_job as run_bulk_job
    from serve_app.bulk.progress import JobFiles
    from serve_app.bulk.records import ResultFormat, read_input
    from serve_app.bulk.task import TaskSpec

    spec = TaskSpec("classify", labels=tuple(LABELS))
    source = read_input(dataset)
    fmt = ResultFormat("jsonl", spec.columns)
    files = JobFiles(output, output.with_suffix(".errors.jsonl"), {"bench": priority}, header=fmt.header())
    files.open(True)
    started = time.perf_counter()
    with HttpRunner(url, spec, priority="interactive") as runner:
        run_bulk_job(source.items, files, fmt, runner, runner.default_chunk_records, runner.max_chunk_bytes)
    return len(source.items) / (time.perf_counter() - started)


def beside(prober: Prober, work: Any) -> tuple[dict[str, Any], float]:
    prober.start()
    try:
        rate = work()
    finally:
        latencies = prober.stop()
    return latencies, rate


def main(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["TQDM_DISABLE"] = "1"  # the in-process bulk run's progress bar would break up this command's log
    from bench.lib.checkpoint import model_for_run  # torch: imported when a run starts

    model = model_for_run(args.model, args.quick, log)
    count = args.records or (400 if args.quick else 256)
    workdir = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    # One file per mt5-bulk --url run: a file classified again would be answered by the classification cache.
    datasets = [workdir / f"bench-{seed}.jsonl" for seed in (7, 8, 9)]
    for seed, path in zip((7, 8, 9), datasets, strict=True):
        write_dataset(path, count, seed)
    dataset = datasets[0]
    data = dataset.read_bytes()
    probe_texts = chinese_texts(64, 99)
    env = {"MT5_MODEL": model, "MT5_JOBS_STORE": str(workdir / "store")}
    run = ServeRun(shipped_config(free_port()), workdir / "serve", env=env)
    log(f"starting the service on {results.relative(model) if model != 'demo' else 'demo'} ...")
    run.start(timeout_s=600)
    out: dict[str, Any] = {**run_header("jobs", getattr(args, "argv", [])), "model": results.relative(model)}
    try:
        prober = Prober(run.url, probe_texts)
        for text in probe_texts[:4]:  # warm-up
            httpx.post(f"{run.url}/classify", json={"text": text, "labels": LABELS}, timeout=300)
        run_job(run.url, "\n".join(data.decode().splitlines()[:32]).encode())  # warm-up: the job path once
        log("idle /classify ...")
        prober.start()
        time.sleep(20 if not args.quick else 8)
        idle = prober.stop()
        log(f"idle p95 {idle['p95_s']:.3f} s; alone: the job, then mt5-bulk --url ...")
        job_alone = run_job(run.url, data)
        bulk_alone = run_bulk(run.url, dataset, workdir, "background")
        log(f"alone: job {job_alone:.1f} rec/s, mt5-bulk {bulk_alone:.1f} rec/s; beside /classify ...")
        with_job, job_busy = beside(prober, lambda: run_job(run.url, data))
        with_bulk, bulk_busy = beside(prober, lambda: run_bulk(run.url, datasets[1], workdir, "background"))
        with_shared, shared_busy = beside(prober, lambda: run_bulk(run.url, datasets[2], workdir, "interactive"))
    finally:
        run.stop()
    out.update(
        {
            "records": count,
            "idle": idle,
            "job_alone_records_per_s": job_alone,
            "bulk_alone_records_per_s": bulk_alone,
            "beside_job": {**with_job, "records_per_s": job_busy},
            "beside_bulk_background": {**with_bulk, "records_per_s": bulk_busy},
            "beside_bulk_interactive": {**with_shared, "records_per_s": shared_busy},
        }
    )
    section = markdown(out)
    path = results.save("jobs", out, section, out_dir=args.out, page=results.page_for(args.out, args.quick))
    log(f"wrote {results.relative(path)}")
    print(section)
    return out


def markdown(out: dict[str, Any]) -> str:
    idle_p95 = out["idle"]["p95_s"]

    def row(name: str, latencies: dict[str, Any], rate: float | None) -> str:
        p95 = latencies["p95_s"]
        ratio = f"{p95 / idle_p95:.2f}x" if p95 and idle_p95 else "–"
        speed = f"{rate:.1f}" if rate is not None else "–"
        return (
            f"| {name} | {latencies['requests']} | {latencies['p50_s'] * 1000:.0f} ms | {p95 * 1000:.0f} ms | "
            f"**{ratio}** | {speed} |"
        )

    lines = [
        f"Model `{out['model']}`, {out['records']} records (classify, 6 labels), the shipped config.yaml. One client "
        "sends /classify one request after another; its latency idle and beside each bulk load.",
        "",
        "| /classify beside | requests | p50 | p95 | p95 × idle | the load's records/s |",
        "|---|---:|---:|---:|---:|---:|",
        row("nothing (idle)", out["idle"], None),
        row("a classify job (POST /jobs)", out["beside_job"], out["beside_job"]["records_per_s"]),
        row(
            "mt5-bulk --url (background)", out["beside_bulk_background"], out["beside_bulk_background"]["records_per_s"]
        ),
        row(
            "the same bulk run at interactive priority (one queue)",
            out["beside_bulk_interactive"],
            out["beside_bulk_interactive"]["records_per_s"],
        ),
        "",
        f"Alone: the job {out['job_alone_records_per_s']:.1f} records/s, mt5-bulk --url "
        f"{out['bulk_alone_records_per_s']:.1f} records/s: the job at "
        f"**{out['job_alone_records_per_s'] / out['bulk_alone_records_per_s']:.0%}** of mt5-bulk's speed.",
    ]
    return "\n".join(lines)
