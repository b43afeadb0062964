"""ModelReplica's scheduler as Ray Serve metrics (Prometheus through Ray) and a periodic log line."""

from __future__ import annotations

import logging
import time
from collections import Counter

from ray.serve.metrics import Counter as MetricCounter
from ray.serve.metrics import Gauge, Histogram

from serve_app.scheduling.scheduler import IterationReport

logger = logging.getLogger("ray.serve")

ROW_BUCKETS: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
TOKEN_BUCKETS: list[float] = [16, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
TIME_BUCKETS: list[float] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
SUMMARY_EVERY_S = 10.0


def row_bucket(rows: int) -> str:
    """The power-of-two bucket a step's row count falls in, as the summary line prints it."""
    upper = 1
    while upper < rows:
        upper *= 2
    return str(upper) if upper <= 2 else f"{upper // 2 + 1}-{upper}"


class SchedulerMetrics:
    """Records every iteration of each lane; logs each lane's summary (with its cumulative rows-per-step histogram)
    every 10 s and when idle.

    Each lane's loop calls `record`/`flush` with its own lane number from its own thread, so the
    per-lane windows need no lock; Ray's metric objects are shared, told apart by the "lane" tag.
    """

    def __init__(self, lanes: int = 1) -> None:
        self.lanes = lanes
        self.step_rows = Histogram(
            "mt5_step_rows",
            description="Live decoder rows per decoding step",
            boundaries=ROW_BUCKETS,
            tag_keys=("lane",),
        )
        self.step_seconds = Histogram(
            "mt5_step_seconds", description="Time of one decoding step", boundaries=TIME_BUCKETS, tag_keys=("lane",)
        )
        self.prefill_tokens = Histogram(
            "mt5_prefill_tokens",
            description="Prompt tokens encoded per scheduler iteration",
            boundaries=TOKEN_BUCKETS,
            tag_keys=("lane",),
        )
        self.score_batch = Histogram(
            "mt5_score_batch_size", description="Requests per scoring batch", boundaries=ROW_BUCKETS, tag_keys=("lane",)
        )
        self.score_seconds = Histogram(
            "mt5_score_seconds", description="Time of one scoring batch", boundaries=TIME_BUCKETS, tag_keys=("lane",)
        )
        self.queue_wait = Histogram(
            "mt5_queue_wait_seconds",
            description="Time a request waited before it started",
            boundaries=TIME_BUCKETS,
            tag_keys=("kind", "lane"),  # type: ignore[arg-type]  # Ray annotates tag_keys as a 1-tuple
        )
        self.admitted = MetricCounter(
            "mt5_requests_admitted",
            description="Requests that started",
            tag_keys=("kind", "lane"),  # type: ignore[arg-type]  # Ray annotates tag_keys as a 1-tuple
        )
        self.finished = MetricCounter(
            "mt5_requests_finished", description="Requests answered by the scheduler", tag_keys=("lane",)
        )
        self.tokens = MetricCounter(
            "mt5_generated_tokens", description="Tokens generated (one per live row per step)", tag_keys=("lane",)
        )
        self.live_rows = Gauge("mt5_live_rows", description="Decoder rows in the running batch", tag_keys=("lane",))
        self.waiting = Gauge("mt5_waiting_requests", description="Requests queued in the scheduler", tag_keys=("lane",))
        self.rows_histograms: list[Counter[str]] = [Counter() for _ in range(lanes)]  # since start, for the log line
        self._windows = [_Window() for _ in range(lanes)]

    def record(self, lane: int, report: IterationReport) -> None:
        tags = {"lane": str(lane)}
        if report.live_rows:
            self.step_rows.observe(report.live_rows, tags=tags)
            self.step_seconds.observe(report.step_seconds, tags=tags)
            self.tokens.inc(report.live_rows, tags=tags)
            self.rows_histograms[lane][row_bucket(report.live_rows)] += 1
        if report.prefill_tokens:
            self.prefill_tokens.observe(report.prefill_tokens, tags=tags)
        if report.scored:
            self.score_batch.observe(report.scored, tags=tags)
            self.score_seconds.observe(report.score_seconds, tags=tags)
        for kind, seconds in report.queue_waits:
            self.queue_wait.observe(seconds, tags={"kind": kind, **tags})
            self.admitted.inc(1, tags={"kind": kind, **tags})
        if report.finished:  # Ray counters refuse inc(0)
            self.finished.inc(report.finished, tags=tags)
        self.live_rows.set(report.live_rows, tags=tags)
        self.waiting.set(report.waiting, tags=tags)
        self._windows[lane].add(report)
        if self._windows[lane].elapsed() >= SUMMARY_EVERY_S:
            self.flush(lane)

    def flush(self, lane: int) -> None:
        """Log the lane's window summary now (its loop calls this when it goes idle) and start a new window."""
        window = self._windows[lane]
        if window.iterations:
            name = "scheduler" if self.lanes == 1 else f"scheduler[lane={lane}]"
            logger.info("%s: %s rows_hist={%s}", name, window.summary(), _histogram(self.rows_histograms[lane]))
        self._windows[lane] = _Window()


def _histogram(histogram: Counter[str]) -> str:
    order = sorted(histogram, key=lambda bucket: int(bucket.split("-")[-1]))
    return ",".join(f"{bucket}:{histogram[bucket]}" for bucket in order)


class _Window:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.iterations = self.steps = self.rows = self.max_rows = 0
        self.step_seconds = self.busy_seconds = 0.0
        self.prefill_tokens = self.admitted = self.scored = self.finished = self.cancelled_rows = 0
        self.cancelled_waiting = 0
        self.score_batches = self.score_batch_max = 0
        self.max_wait = 0.0
        self.waiting = 0

    def add(self, report: IterationReport) -> None:
        self.iterations += 1
        self.busy_seconds += report.seconds
        if report.live_rows:
            self.steps += 1
            self.rows += report.live_rows
            self.max_rows = max(self.max_rows, report.live_rows)
            self.step_seconds += report.step_seconds
        self.prefill_tokens += report.prefill_tokens
        self.admitted += report.admitted
        self.scored += report.scored
        if report.scored:
            self.score_batches += 1
            self.score_batch_max = max(self.score_batch_max, report.scored)
        self.finished += report.finished
        self.cancelled_rows += report.cancelled_rows
        self.cancelled_waiting += report.cancelled_waiting
        self.max_wait = max([self.max_wait, *(seconds for _, seconds in report.queue_waits)])
        self.waiting = report.waiting

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> str:
        steps = max(self.steps, 1)
        return (
            f"iterations={self.iterations} busy={self.busy_seconds / max(self.elapsed(), 1e-9):.0%} steps={self.steps} "
            f"rows_per_step_mean={self.rows / steps:.1f} rows_per_step_max={self.max_rows} "
            f"step_ms_mean={1000 * self.step_seconds / steps:.1f} prefill_tokens={self.prefill_tokens} "
            f"admitted={self.admitted} scored={self.scored} score_batches={self.score_batches} "
            f"score_batch_max={self.score_batch_max} finished={self.finished} "
            f"cancelled_rows={self.cancelled_rows} cancelled_waiting={self.cancelled_waiting} "
            f"max_queue_wait_ms={1000 * self.max_wait:.0f} waiting={self.waiting}"
        )
