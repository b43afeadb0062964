"""Several schedulers over one engine, each on its own thread ("lanes"), sharing the replica's cores.

On a CPU node one batch split across all cores loses time at every op's barrier,
and more so when another process takes a core mid-op; independent batches do
not wait for each other (docs/perf-notes.md, "two scheduler lanes per CPU replica"). A request goes to the
lane with the least outstanding work, so load splits evenly; a lane's torch threads follow how many lanes are busy
(CoreShare), so a lone request still runs on every core. Background work (dataset jobs) keeps off lane 0.

Each lane is a complete Scheduler: continuous batching, admission and
cancellation work per lane exactly as with one. The weights are shared (the
engine holds no per-call state).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from serve_app.engine import GenerationRequest, ScoringRequest
from serve_app.engine.requests import ScoringResult
from serve_app.scheduling.config import SchedulerConfig
from serve_app.scheduling.loop import CoreShare, SchedulerLoop
from serve_app.scheduling.scheduler import UNTAGGED, IterationReport, Scheduler, WorkTag

BATCH_POLL_S = 0.05  # how often wait_for_batches looks


class Lanes:
    def __init__(
        self,
        schedulers: Sequence[Scheduler],
        cores: int,
        on_iteration: Callable[[int, IterationReport], None] | None = None,
        on_idle: Callable[[int], None] | None = None,
    ) -> None:
        if not schedulers:
            raise ValueError("Lanes needs at least one scheduler")
        self.cores = CoreShare(cores)
        self.schedulers = list(schedulers)
        # A background lane waits while another lane has an interactive request, so that request gets every core.
        for lane, scheduler in enumerate(self.schedulers[1:], start=1):
            scheduler.defer_background = _interactive_elsewhere(self.schedulers, lane)
        self.loops = [
            SchedulerLoop(
                scheduler,
                cores=self.cores,
                on_iteration=None if on_iteration is None else _bind(on_iteration, lane),
                on_idle=None if on_idle is None else _bind(on_idle, lane),
                name=f"mt5-scheduler-{lane}",
            )
            for lane, scheduler in enumerate(self.schedulers)
        ]

    async def generate(
        self,
        request: GenerationRequest,
        background: bool = False,
        tag: WorkTag = UNTAGGED,
    ) -> list[list[int]]:
        """`tag`: the HTTP request's id, named in the scheduler's log lines about this request, and where the
        scheduler writes the times of its stages (its traces)."""
        return await self.loops[self.pick(background)].generate(request, background, tag)

    async def score(
        self,
        request: ScoringRequest,
        background: bool = False,
        tag: WorkTag = UNTAGGED,
    ) -> ScoringResult:
        return await self.loops[self.pick(background)].score(request, background, tag)

    def pick(self, background: bool = False) -> int:
        """Interactive work: the lane with the least outstanding work. Background work never takes lane 0 when there
        are others: an interactive request then finds a lane whose iteration is not a background batch, and while
        lane 0 is idle CoreShare gives the background lanes its cores."""
        if background and len(self.schedulers) > 1:
            return 1 + least_outstanding(self.schedulers[1:])
        return least_outstanding(self.schedulers)

    def reconfigure(self, config: SchedulerConfig) -> None:
        """Each lane gets the same budgets (rows and prefill tokens are per lane)."""
        for scheduler in self.schedulers:
            scheduler.reconfigure(config)

    def wait_for_batches(self, timeout_s: float) -> bool:
        """Wait until every lane's batch is made for its budgets (with decode_graphs, its graphs captured); False
        if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        while not all(scheduler.batch_ready for scheduler in self.schedulers):
            if time.monotonic() > deadline:
                return False
            time.sleep(BATCH_POLL_S)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        for loop in self.loops:
            loop.stop(timeout_s)


def least_outstanding(schedulers: Sequence[Scheduler]) -> int:
    """The lane with the fewest outstanding requests (the first of equals, so a lone request takes lane 0)."""
    return min(range(len(schedulers)), key=lambda lane: schedulers[lane].outstanding)


def _interactive_elsewhere(schedulers: Sequence[Scheduler], lane: int) -> Callable[[], bool]:
    others = [scheduler for index, scheduler in enumerate(schedulers) if index != lane]
    return lambda: any(scheduler.interactive_outstanding for scheduler in others)


def _bind(callback: Callable[..., None], lane: int) -> Callable[..., None]:
    return lambda *args: callback(lane, *args)


def lane_count(setting: int | str, device_type: str, threads: int) -> int:
    """config.yaml's `scheduler_lanes` (or a command line's "auto" / "2"): "auto" is 2 on a CPU with at least 2 threads
    and 1 on a GPU.

    On a GPU one batch already keeps the device busy, and lanes would only split it. On a CPU a
    number is capped at one lane per torch thread.
    """
    if setting == "auto":
        return 1 if device_type != "cpu" else min(2, max(1, threads))
    lanes = int(setting)
    return min(lanes, max(1, threads)) if device_type == "cpu" else lanes
