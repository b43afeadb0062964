"""Run a Scheduler on its own thread and await its answers from asyncio (the ModelReplica's event loop).

The thread runs all of its scheduler's torch work, so it never blocks the event loop,
which keeps accepting requests that join the running batch at the next step. Several
loops may share one engine (scheduling/lanes.py); CoreShare splits the torch threads
between the busy ones.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from serve_app.engine import GenerationRequest, ScoringRequest
from serve_app.engine.requests import ScoringResult
from serve_app.scheduling.scheduler import UNTAGGED, IterationReport, Scheduler, WorkTag

logger = logging.getLogger(__name__)
# After an iteration raised (not a failed step, which fails its batch inside the iteration: something the
# scheduler could not recover, such as no memory for a new batch), before the next.
FAILED_ITERATION_PAUSE_S = 1.0


class CoreShare:
    """The cores of one replica, shared by its busy loops: each busy loop runs torch on cores // busy threads.

    A lone request gets every core; when several lanes (serve_app/scheduling/lanes.py) work at once,
    each gets its part, so their torch threads never outnumber the cores.
    """

    def __init__(self, cores: int) -> None:
        self.cores = max(1, cores)
        self._busy = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self._busy += 1

    def leave(self) -> None:
        with self._lock:
            self._busy = max(0, self._busy - 1)

    def threads_per_loop(self) -> int:
        return max(1, self.cores // max(1, self._busy))


class SchedulerLoop:
    def __init__(
        self,
        scheduler: Scheduler,
        on_iteration: Callable[[IterationReport], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        cores: CoreShare | None = None,
        name: str = "mt5-scheduler",
    ) -> None:
        self.scheduler = scheduler
        # The torch threads follow this share of the cores; None leaves torch's own setting alone.
        self.cores = cores
        self.on_iteration = on_iteration
        self.on_idle = on_idle
        self._threads_now = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def generate(
        self,
        request: GenerationRequest,
        background: bool = False,
        tag: WorkTag = UNTAGGED,
    ) -> list[list[int]]:
        sequences: list[list[int]] = await self._await(
            lambda done: self.scheduler.submit_generation(request, done, background, tag)
        )
        return sequences

    async def score(
        self,
        request: ScoringRequest,
        background: bool = False,
        tag: WorkTag = UNTAGGED,
    ) -> ScoringResult:
        result: ScoringResult = await self._await(
            lambda done: self.scheduler.submit_scoring(request, done, background, tag)
        )
        return result

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._thread.join(timeout_s)

    async def _await(self, submit: Callable[[Callable[[Any, BaseException | None], None]], int]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, result, error)

        ticket = submit(done)
        try:
            return await future
        except asyncio.CancelledError:  # the caller gave up (client gone, ingress timeout): free its rows
            self.scheduler.cancel(ticket)
            raise

    def _run(self) -> None:
        busy = False
        while not self._stopping.is_set():
            if not self.scheduler.has_work():
                if busy and self.cores is not None:
                    self.cores.leave()
                busy = False
                if self.on_idle is not None:
                    self.on_idle()
                self.scheduler.wait_for_work(timeout_s=0.5)
                continue
            if not busy and self.cores is not None:
                self.cores.enter()
            busy = True
            self._set_threads()
            try:
                report = self.scheduler.run_iteration()
                if self.on_iteration is not None:
                    self.on_iteration(report)
            except Exception:  # noqa: BLE001 - the loop must outlive any one iteration
                logger.exception("scheduler iteration failed")
                self._stopping.wait(FAILED_ITERATION_PAUSE_S)  # a failure that repeats is not logged in a tight loop
        if busy and self.cores is not None:
            self.cores.leave()

    def _set_threads(self) -> None:
        """Torch's intra-op thread count is per thread (OpenMP): set it here, where the work runs, when it changes."""
        if self.cores is None:
            return
        threads = self.cores.threads_per_loop()
        if threads != self._threads_now:
            torch.set_num_threads(threads)
            self._threads_now = threads

    @property
    def torch_threads(self) -> int:
        """The torch threads this loop ran its last iteration on (0 before its first)."""
        return self._threads_now


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
