"""JobRunner: runs the dataset jobs (serve_app/jobs), their model work on the ModelReplicas at background priority.

One replica (config.yaml): it owns every running job. The Ingress saves a new job in the store and
calls `start`; a JobRunner that starts (first deploy, a restart of the service, a replacement after
a crash) resumes every job the store holds as queued or running, so a job outlives the process that
ran it. Its model calls are the text tasks' own (TextDeployment), sent as background work: they go to
every ModelReplica, and each replica's scheduler serves interactive requests first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.access.keys import ANONYMOUS, DEFAULT_KEY_NAME, team_of
from serve_app.deployments.failures import input_error
from serve_app.deployments.key_ledger import LEDGER_TIMEOUT_S
from serve_app.deployments.key_metrics import KeyMetrics
from serve_app.deployments.text_deployment import TextDeployment
from serve_app.jobs.runner import JobLimits, JobRun
from serve_app.jobs.store import JobStore
from serve_app.text.model_calls import CountedCalls

logger = logging.getLogger("ray.serve")


@serve.deployment(name="JobRunner")
class JobRunner(TextDeployment):
    async def __init__(  # type: ignore[misc]
        self, settings: dict[str, Any], replica: DeploymentHandle[Any], key_ledger: DeploymentHandle[Any]
    ) -> None:
        super().__init__(settings, replica)
        self.key_ledger = key_ledger
        self.key_metrics = KeyMetrics()
        jobs = self.settings.jobs
        self.store = JobStore(jobs.store)
        self.limits = JobLimits(chunk_records=jobs.chunk_records, chunks_in_flight=jobs.chunks_in_flight)
        self.runs: dict[str, JobRun] = {}
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        asyncio.get_running_loop().create_task(self._resume_unfinished())

    async def _resume_unfinished(self) -> None:
        states = await asyncio.to_thread(self.store.states)
        unfinished = [state for state in reversed(states) if not state.finished]  # oldest first
        if unfinished:
            logger.info("JobRunner: %d unfinished job(s) in %s; resuming them", len(unfinished), self.store.uri)
        for state in unfinished:
            await self.start(state.id, state.owner)

    async def start(self, job_id: str, owner: str = "") -> None:
        """Run the job `job_id` (saved in the store), unless it already runs here; the tokens it generates count
        against its `owner`'s key (a named key's daily budget and metrics)."""
        if job_id in self.tasks:
            return
        run = JobRun(
            self.store,
            job_id,
            self.text_tasks,
            CountedCalls(self.model_calls(background=True), self._charge_to(owner)),
            self.settings.scoring,
            self.limits,
            input_error=input_error,
        )
        self.runs[job_id] = run
        task = asyncio.get_running_loop().create_task(run.run())
        self.tasks[job_id] = task
        task.add_done_callback(lambda _: (self.tasks.pop(job_id, None), self.runs.pop(job_id, None)))

    def _charge_to(self, owner: str) -> Callable[[int], None]:
        team = team_of(owner)
        name = team or ("anonymous" if owner == ANONYMOUS.owner else DEFAULT_KEY_NAME)

        def charge(tokens: int) -> None:
            self.key_metrics.generated(name, tokens)
            if team is not None and tokens > 0:  # only a named key has a budget to charge
                asyncio.get_running_loop().create_task(self._tell_ledger(team, tokens))

        return charge

    async def _tell_ledger(self, team: str, tokens: int) -> None:
        try:
            await asyncio.wait_for(self.key_ledger.charge.remote(team, tokens), timeout=LEDGER_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the job goes on; only the budget misses these tokens
            logger.warning("JobRunner: KeyLedger not reached (%r); %d tokens of %s not counted", exc, tokens, team)

    async def cancel(self, job_id: str) -> None:
        """Stop the job now (its cancel marker is already in the store, so a runner starting later stops it too)."""
        run = self.runs.get(job_id)
        if run is not None:
            run.cancel()
