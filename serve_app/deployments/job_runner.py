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
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.deployments.failures import input_error
from serve_app.deployments.text_deployment import TextDeployment
from serve_app.jobs.runner import JobLimits, JobRun
from serve_app.jobs.store import JobStore

logger = logging.getLogger("ray.serve")


@serve.deployment(name="JobRunner")
class JobRunner(TextDeployment):
    async def __init__(self, settings: dict[str, Any], replica: DeploymentHandle[Any]) -> None:  # type: ignore[misc]
        super().__init__(settings, replica)
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
            await self.start(state.id)

    async def start(self, job_id: str) -> None:
        """Run the job `job_id` (saved in the store), unless it already runs here."""
        if job_id in self.tasks:
            return
        run = JobRun(
            self.store,
            job_id,
            self.text_tasks,
            self.model_calls(background=True),
            self.settings.scoring,
            self.limits,
            input_error=input_error,
        )
        self.runs[job_id] = run
        task = asyncio.get_running_loop().create_task(run.run())
        self.tasks[job_id] = task
        task.add_done_callback(lambda _: (self.tasks.pop(job_id, None), self.runs.pop(job_id, None)))

    async def cancel(self, job_id: str) -> None:
        """Stop the job now (its cancel marker is already in the store, so a runner starting later stops it too)."""
        run = self.runs.get(job_id)
        if run is not None:
            run.cancel()
