"""The serving core without Ray or HTTP: N closed-loop asyncio clients against the scheduler lanes of one engine.

What continuous batching itself delivers, apart from what Ray Serve's processes and HTTP cost:
the same Lanes and Schedulers the ModelReplica runs, fed by clients that each send their next
request when the last one answered.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench.lib.loadgen import Sample, percentile, spread_throughput


async def closed_loop(
    lanes, requests: list[Any], kind: str, clients: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    done: list[tuple[float, float]] = []
    stop = asyncio.Event()
    counter = {"next": 0}

    async def client() -> None:
        while not stop.is_set():
            request = requests[counter["next"] % len(requests)]
            counter["next"] += 1
            started = time.perf_counter()
            await (lanes.generate(request) if kind == "augment" else lanes.score(request))
            done.append((started, time.perf_counter()))

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(warmup_s)
    begin = time.perf_counter()
    await asyncio.sleep(duration_s)
    end = time.perf_counter()
    stop.set()
    await asyncio.gather(*tasks)
    latencies = [e - s for s, e in done if begin <= e <= end]
    return {
        "clients": clients,
        # each answer spread over its lifetime (loadgen.py: clients that finish together answer in bursts)
        "requests_per_s": spread_throughput([Sample(s, e, 200) for s, e in done], (begin, end)),
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "answers": len(latencies),
    }


def measure(
    service,
    work,
    clients: int,
    duration_s: float,
    warmup_s: float,
    threads: int | None = None,
    lanes: int | str = "auto",
    config: Any = None,
) -> dict[str, Any]:
    """`clients` closed-loop clients running `work`'s requests through the service's scheduler lanes, each lane with
    `config`'s budgets (a SchedulerConfig; default: config.yaml's CPU-sized defaults)."""
    import torch

    from serve_app.scheduling.config import SchedulerConfig
    from serve_app.scheduling.lanes import Lanes, lane_count
    from serve_app.scheduling.scheduler import Scheduler

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    kind = "augment" if work.run == service.engine.generate else "classify"
    count = lane_count(lanes, work.device.type, threads)
    loop = Lanes([Scheduler(service.engine, config or SchedulerConfig()) for _ in range(count)], cores=threads)
    try:
        return {"lanes": count, **asyncio.run(closed_loop(loop, work.requests, kind, clients, warmup_s, duration_s))}
    finally:
        loop.stop()
