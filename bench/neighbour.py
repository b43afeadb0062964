"""What neighbour processes cost the engine: its batches with the neighbours held, then one kind running.

    .venv/bin/python -m bench.neighbour --rounds 12

Serve's hops (proxy, Ingress, Augmenter, controller, Ray's own processes) have to
run somewhere; on a box the size of the model's node they run on the cores beside
it. On a virtual machine those cores share the host's caches and memory, and may be
hyperthreads of one physical core, so a process on one core may slow the work on
another; and a process that wakes on the engine's own core preempts it. That cost
falls on Serve's ModelReplica and never on the engine-only ceiling, which runs with
the box to itself (issue 11's share targets).

This measures it, without Ray: one engine on `--threads` torch threads runs batches of
the benchmark's work; before each batch one kind of neighbour is let run (SIGCONT) or
all are held (SIGSTOP). Arms are shuffled in every round, so the box's drift falls on
all of them alike, and each arm is compared with the neighbour-free batch of its own
round, by wall time and by the CPU the engine's process used for the same work (all its
torch threads), with the times a second its threads were preempted (involuntary context
switches). Neighbours (what each really took is reported):
- python: one process, a pure-Python loop busy `--duty` of the time in 5 ms bursts
  (about what Serve's other processes take under /augment: 0.24-0.26 of a core);
- memory: the same with copies of a 64 MiB buffer (memory traffic, the other thing
  cores share);
- chatty: eight processes waking every 6 ms for 0.4 ms of copying each, which is how
  Ray's and Serve's processes take their CPU (many short wake-ups: under /augment the
  ModelReplica's threads are preempted 136-180 times a second with one torch thread and
  about 1,340 as shipped, the engine alone 2 and 32 times; BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import procs, report
from bench.ceiling import engine_work
from bench.run import RESULTS_DIR, log


@dataclass(frozen=True)
class NeighbourKind:
    """How a neighbour takes its CPU: how many processes, each busy `duty` of the time in bursts of `burst_s` doing `step`."""

    processes: int
    burst_s: float
    step: str  # one step of the busy loop
    duty: float


def kinds(duty: float) -> dict[str, NeighbourKind]:
    """The neighbour kinds; python and memory keep `duty`, chatty its own."""
    return {
        "python": NeighbourKind(1, 0.005, "sum(range(1000))", duty),
        "memory": NeighbourKind(1, 0.005, "bytes(block)", duty),
        "chatty": NeighbourKind(8, 0.0004, "bytes(block[:1048576])", 0.0004 / 0.0064),
    }


def neighbour_source(kind: NeighbourKind) -> str:
    """A program busy `kind.duty` of the time in bursts of `kind.step`, until killed."""
    return (
        "import time\n"
        "block = bytearray(64 * 1024 * 1024)\n"
        "while True:\n"
        f"    until = time.perf_counter() + {kind.burst_s}\n"
        "    while time.perf_counter() < until:\n"
        f"        {kind.step}\n"
        f"    time.sleep({kind.burst_s * (1 - kind.duty) / kind.duty})\n"
    )


def own_preemptions() -> int:
    """Times this process's threads (the engine's torch threads among them) have been preempted."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


@dataclass(frozen=True)
class Batch:
    wall_s: float
    cpu_s: float  # the engine process's (all its torch threads)
    preempted_per_s: float
    neighbour_cores: float


class Neighbours:
    """The processes of every kind, held (SIGSTOP); `run_batch` lets one kind run while the work runs."""

    def __init__(self, duty: float) -> None:
        self.processes = {
            name: [subprocess.Popen([sys.executable, "-c", neighbour_source(kind)]) for _ in range(kind.processes)]
            for name, kind in kinds(duty).items()
        }
        time.sleep(1.0)  # started and in their loops before they are held
        for group in self.processes.values():
            self._signal(group, signal.SIGSTOP)

    def run_batch(self, name: str | None, work: Callable[[], Any]) -> Batch:
        """Time `work()` with neighbour kind `name` running (None: none runs)."""
        group = self.processes.get(name, []) if name else []
        self._signal(group, signal.SIGCONT)
        try:
            time.sleep(0.2)  # the neighbours are back in their stride
            theirs = sum(procs.cpu_ns(process.pid) for process in group)
            preempted, wall, cpu = own_preemptions(), time.perf_counter(), time.process_time()
            work()
            wall, cpu, preempted = time.perf_counter() - wall, time.process_time() - cpu, own_preemptions() - preempted
            theirs = sum(procs.cpu_ns(process.pid) for process in group) - theirs
            return Batch(wall, cpu, preempted / wall, theirs / 1e9 / wall)
        finally:
            self._signal(group, signal.SIGSTOP)

    def close(self) -> None:
        for group in self.processes.values():
            for process in group:
                process.kill()
                process.wait(timeout=10)

    @staticmethod
    def _signal(group: list[subprocess.Popen[bytes]], sig: int) -> None:
        for process in group:
            process.send_signal(sig)


def slowdown(runs: dict[str, list[Batch]], arm: str) -> dict[str, float]:
    """Median over rounds of the arm's batch against the neighbour-free batch of the same round (wall and engine CPU)."""
    pairs = list(zip(runs[arm], runs["none"]))
    return {
        "wall": statistics.median(batch.wall_s / alone.wall_s for batch, alone in pairs),
        "cpu": statistics.median(batch.cpu_s / alone.cpu_s for batch, alone in pairs),
    }


def measure(model: str, workload: str, batch: int, rounds: int, duty: float, threads: int, seed: int = 0) -> dict[str, Any]:
    torch.set_num_threads(threads)
    work = engine_work(model, workload)
    work.run(work.chunk(0, batch))  # warm-up: first-call allocations
    neighbours = list(kinds(duty))
    arms = ["none", *neighbours]
    runs: dict[str, list[Batch]] = {arm: [] for arm in arms}
    shuffle = random.Random(seed)
    held = Neighbours(duty)
    try:
        for round_index in range(rounds):
            chunk = work.chunk(round_index * batch, batch)
            for arm in shuffle.sample(arms, len(arms)):
                runs[arm].append(held.run_batch(None if arm == "none" else arm, lambda: work.run(chunk)))
            log(f"round {round_index + 1}: " + ", ".join(f"{arm} {runs[arm][-1].wall_s:.2f} s" for arm in arms))
    finally:
        held.close()

    def median(arm: str, field: str) -> float:
        return round(statistics.median(getattr(batch, field) for batch in runs[arm]), 3)

    return {
        "workload": workload,
        "batch": batch,
        "rounds": rounds,
        "duty": duty,
        "threads": threads,
        "seconds": {arm: [round(batch.wall_s, 3) for batch in runs[arm]] for arm in arms},
        # what each neighbour kind really took (all its processes, as the kernel gave it), median over rounds
        "neighbour_cores": {arm: median(arm, "neighbour_cores") for arm in neighbours},
        "engine_preempted_per_s": {arm: median(arm, "preempted_per_s") for arm in arms},
        # >1: the batch took longer (wall) and more of the engine's CPU (cpu) with the neighbour running
        "slowdown": {arm: {key: round(value, 3) for key, value in slowdown(runs, arm).items()} for arm in neighbours},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: build/reuse the mT5-base-shaped random checkpoint)")
    parser.add_argument("--workload", choices=["classify", "augment"], default="augment")
    parser.add_argument("--batch", type=int, default=16, help="requests per batch (16: one lane's part of 32 clients)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--duty", type=float, default=0.25, help="the share of one core the python and memory neighbours keep busy (chatty keeps its own)")
    parser.add_argument("--threads", type=int, default=1, help="the engine's torch threads (1 leaves the other cores to the neighbour)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "neighbour.json")
    args = parser.parse_args(argv)
    if not 0 < args.duty <= 1:
        parser.error("--duty must be in (0, 1]")
    if args.model:
        model = args.model
    else:
        from bench.checkpoint import build_checkpoint

        model = str(build_checkpoint(None, log=log))
    result = report.run_header("bench.neighbour", argv) | measure(model, args.workload, args.batch, args.rounds, args.duty, args.threads)
    for arm, ratio in result["slowdown"].items():
        log(f"{arm} neighbour ({result['neighbour_cores'][arm]:.2f} cores, engine preempted {result['engine_preempted_per_s'][arm]:.0f}/s): "
            f"batches {ratio['wall']:.3f}x as long, {ratio['cpu']:.3f}x the engine's CPU")
    report.save_results(result, args.out)
    log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
