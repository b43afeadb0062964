"""Run a Scheduler on its own thread and await its answers from asyncio (the ModelReplica's event loop).

The thread owns the engine: torch work never blocks the event loop, which keeps
accepting requests that join the running batch at the next step.
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
from serve_app.scheduling.scheduler import IterationReport, Scheduler

logger = logging.getLogger(__name__)


class SchedulerLoop:
    def __init__(
        self,
        scheduler: Scheduler,
        torch_threads: int | None = None,
        on_iteration: Callable[[IterationReport], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.torch_threads = torch_threads
        self.on_iteration = on_iteration
        self.on_idle = on_idle
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mt5-scheduler", daemon=True)
        self._thread.start()

    async def generate(self, request: GenerationRequest) -> list[list[int]]:
        return await self._await(lambda done: self.scheduler.submit_generation(request, done))

    async def score(self, request: ScoringRequest) -> ScoringResult:
        return await self._await(lambda done: self.scheduler.submit_scoring(request, done))

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
        if self.torch_threads:  # torch's intra-op thread count is per thread: set it where the work runs
            torch.set_num_threads(self.torch_threads)
        while not self._stopping.is_set():
            if not self.scheduler.has_work():
                if self.on_idle is not None:
                    self.on_idle()
                self.scheduler.wait_for_work(timeout_s=0.5)
                continue
            try:
                report = self.scheduler.run_iteration()
                if self.on_iteration is not None:
                    self.on_iteration(report)
            except Exception:  # noqa: BLE001 - the loop must outlive any one iteration
                logger.exception("scheduler iteration failed")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
