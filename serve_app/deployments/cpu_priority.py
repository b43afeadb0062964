"""Light deployments yield the CPU to the model replica where they share a node.

On a CPU-only node the proxy, Ingress, Classifier and Generator run beside the
ModelReplica's torch threads; each time one of them takes a core mid-step, the
replica's other thread waits at the next barrier. A lower scheduling priority
(a higher `nice`) lets them run in the gaps instead (docs/perf-notes.md, "CPU priority of the light deployments").
Raising a process's nice value needs no privilege; lowering it would.

Ray starts every worker, the ModelReplica included, at nice 15 (`RAY_worker_niceness`), so
+10 lands at the ceiling of 19. Priority only decides who waits; the light processes' CPU is
the same either way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("ray.serve")


def yield_cpu_to_the_model(nice: int) -> None:
    """Add `nice` to the nice value of every thread of this process (0: leave it).

    On Linux a nice value belongs to a thread, and Ray runs a replica's constructor on one of
    many threads: each is set here; threads started later inherit from the one that starts them."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tasks = Path("/proc/self/task")
    threads = [int(tid) for tid in os.listdir(tasks)] if tasks.is_dir() else [0]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError as exc:  # a thread that just ended, or a sandbox that forbids it: leave it
            logger.debug("could not lower the CPU priority of thread %s: %s", tid, exc)
