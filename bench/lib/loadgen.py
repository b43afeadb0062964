"""Closed-loop HTTP load: N clients, each sends its next request as soon as the last one answered.

A point runs `warmup_s` unmeasured, then `duration_s` measured: requests/s counts the
successful answers that arrived inside the measured window, and the latency
percentiles are taken over those answers. After the window no new request is sent;
requests still in flight may finish for `drain_s`, then they are cancelled (their
connections closed). Loopback only.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench.lib.workloads import Workload


@dataclass
class Sample:
    start: float
    end: float
    status: int  # HTTP status; 0 for a transport error
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class PointResult:
    system: str
    workload: str
    concurrency: int
    duration_s: float
    warmup_s: float
    ok: int
    errors: int
    rps: float
    # Each answer counted as 1 spread over its lifetime, the share inside the window summed: closed loops whose
    # clients finish together (random weights never stop early) answer in bursts, and counting whole answers
    # in a window quantises throughput by a burst (up to +-25 % at 32 clients in 50 s).
    rps_spread: float
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    mean_s: float | None
    max_s: float | None
    # Little's law for a closed loop without think time: mean latency = clients / throughput.
    little_latency_s: float | None
    in_flight_at_end: int
    oldest_in_flight_s: float | None
    sent: int
    error_examples: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None
    model_cpu_cores: float | None = None  # CPU time of the model process / wall time of the point (incl. drain)
    load_average: float | None = None  # the machine's 1-minute load average when the point ended
    system_cpu_cores: float | None = None  # CPU of every process of the system under test / wall time
    client_cpu_cores: float | None = None  # CPU of the load generator itself / wall time

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread_throughput(samples: list[Sample], window: tuple[float, float]) -> float:
    """Answers per second with each answer spread evenly over its own lifetime (see PointResult.rps_spread)."""
    begin, end = window
    if end <= begin:
        return 0.0
    total = 0.0
    for sample in samples:
        life = sample.end - sample.start
        if life <= 0:
            total += 1.0 if begin <= sample.end <= end else 0.0
            continue
        total += max(0.0, min(sample.end, end) - max(sample.start, begin)) / life
    return total / (end - begin)


def summarize(
    samples: list[Sample],
    *,
    system: str,
    workload: str,
    concurrency: int,
    window: tuple[float, float],
    warmup_s: float,
    in_flight_starts: list[float],
    sent: int,
) -> PointResult:
    begin, end = window
    duration = end - begin
    measured = [s for s in samples if begin <= s.end <= end]
    ok = [s.latency for s in measured if s.status == 200]
    failed = [s for s in measured if s.status != 200]
    rps = len(ok) / duration if duration > 0 else 0.0
    rps_spread = spread_throughput([s for s in samples if s.status == 200], window)
    examples = sorted({f"{s.status} {s.error or ''}".strip() for s in failed})[:5]
    return PointResult(
        system=system,
        workload=workload,
        concurrency=concurrency,
        duration_s=round(duration, 3),
        warmup_s=warmup_s,
        ok=len(ok),
        errors=len(failed),
        rps=rps,
        rps_spread=rps_spread,
        p50_s=percentile(ok, 50),
        p95_s=percentile(ok, 95),
        p99_s=percentile(ok, 99),
        mean_s=sum(ok) / len(ok) if ok else None,
        max_s=max(ok) if ok else None,
        little_latency_s=concurrency / rps if rps > 0 else None,
        in_flight_at_end=len(in_flight_starts),
        oldest_in_flight_s=(end - min(in_flight_starts)) if in_flight_starts else None,
        sent=sent,
        error_examples=examples,
    )


async def run_mix(
    base_url: str,
    mix: list[tuple[Workload, int]],
    *,
    system: str = "",
    duration_s: float = 20.0,
    warmup_s: float = 5.0,
    drain_s: float = 15.0,
    request_timeout_s: float = 600.0,
    first_index: int = 0,
) -> list[PointResult]:
    """Several closed loops at once (e.g. 1 classify client while 8 augment clients run): one result per loop."""
    samples: list[list[Sample]] = [[] for _ in mix]
    in_flight: list[dict[int, float]] = [{} for _ in mix]
    stop = asyncio.Event()
    counter = {"next": first_index, "sent": [0 for _ in mix]}
    connections = sum(concurrency for _, concurrency in mix) + 4
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(request_timeout_s, connect=30.0)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, trust_env=False) as client:

        async def one_client(loop: int, workload: Workload) -> None:
            while not stop.is_set():
                index = counter["next"]
                counter["next"] += 1
                counter["sent"][loop] += 1
                body = workload.body(index)
                started = time.perf_counter()
                in_flight[loop][index] = started
                status, error = 0, None
                try:
                    response = await client.post(workload.route, json=body)
                    status = response.status_code
                    if status != 200:
                        error = response.text[:200]
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"[:200]
                finally:
                    in_flight[loop].pop(index, None)
                samples[loop].append(Sample(started, time.perf_counter(), status, error))
                if status != 200 and not stop.is_set():
                    await asyncio.sleep(0.05)  # an erroring server is not hammered in a tight loop

        tasks = [
            asyncio.create_task(one_client(loop, workload))
            for loop, (workload, concurrency) in enumerate(mix)
            for _ in range(concurrency)
        ]
        await asyncio.sleep(warmup_s)
        begin = time.perf_counter()
        await asyncio.sleep(duration_s)
        end = time.perf_counter()
        stop.set()
        still_running = [list(flying.values()) for flying in in_flight]
        _, pending = await asyncio.wait(tasks, timeout=drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    return [
        summarize(
            samples[loop],
            system=system,
            workload=workload.name,
            concurrency=concurrency,
            window=(begin, end),
            warmup_s=warmup_s,
            in_flight_starts=still_running[loop],
            sent=counter["sent"][loop],
        )
        for loop, (workload, concurrency) in enumerate(mix)
    ]


async def warm_up(base_url: str, workload: Workload, requests: int = 2, timeout_s: float = 600.0) -> None:
    """A few sequential requests before measuring (first-call allocations, lazy imports)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, trust_env=False) as client:
        for index in range(requests):
            response = await client.post(workload.route, json=workload.body(10_000 + index))
            response.raise_for_status()
