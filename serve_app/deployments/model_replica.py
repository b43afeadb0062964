"""ModelReplica: the only deployment that holds weights and touches torch.

Requests from every Classifier/Generator replica meet in the replica's schedulers,
whose loops share the engine and work per decoding step (continuous batching): new
requests join a running batch between steps and each answers the moment its own
rows finish (serve_app/scheduling). On a CPU two such lanes split the load and the
cores (serve_app/scheduling/lanes.py). The loops run on their own threads, so the
event loop keeps accepting requests while the model computes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
import torch
from ray import serve
from ray.serve.context import _get_serve_request_context

from serve_app import tracing
from serve_app.deployments.replica_logging import (
    log_refusals_in_one_line,
    send_project_logs_to_serve,
)
from serve_app.deployments.replica_metrics import SchedulerMetrics
from serve_app.engine import (
    GenerationRequest,
    ScoringRequest,
    Seq2SeqEngine,
    load_model,
)
from serve_app.engine.memory import free_device_bytes, limit_gpu_share, row_budget
from serve_app.engine.requests import MAX_NEW_TOKENS, ScoringResult
from serve_app.scheduling.config import SchedulerConfig
from serve_app.scheduling.lanes import Lanes, lane_count
from serve_app.scheduling.scheduler import Scheduler, WorkTag, WorkTimes
from serve_app.settings import AppSettings

logger = logging.getLogger("ray.serve")
# How long the first reconfigure waits for the lanes to make their batches (with decode_graphs: allocate the caches
# and capture every graph) before it lets Serve mark the replica running anyway.
FIRST_BATCH_TIMEOUT_S = 600.0


def replica_threads(gpu_reserved: bool) -> int:
    """torch threads when config.yaml leaves them null.

    Ray sets OMP_NUM_THREADS to the actor's num_cpus, but a CPU replica reserves its whole
    node, so it takes every core. Beside a GPU the CPUs only feed the device: the replica keeps
    to what Ray reserved for it instead of the host's cores (a pod's host may have 100).
    """
    if gpu_reserved:
        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    return os.cpu_count() or 1


def replica_gpu_share() -> float | None:
    """The fraction of a GPU Ray reserved for this replica (`replica_gpus: 0.25`), None for a whole one or more."""
    share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    return share if 0 < share < 1 else None


def current_request_id() -> str:
    """The HTTP request's id, which Serve carries through every deployment call (serve_app/ingress/request_id.py).
    Ray 2.60 has no public reader of its request context; its log filter reads it the same way."""
    return str(_get_serve_request_context().request_id or "")


@serve.deployment(name="ModelReplica")
class ModelReplica:
    def __init__(self, settings: dict[str, Any]) -> None:
        send_project_logs_to_serve()  # the dtype choice and the scheduler's own lines
        log_refusals_in_one_line()  # an input check or a refusal of admission is not a failure of ours
        self.settings = AppSettings.model_validate(settings)
        tracing.start_tracing(self.settings.otlp_endpoint, "ModelReplica")
        gpu_reserved = bool(ray.get_gpu_ids())
        threads = self.settings.torch_threads or replica_threads(gpu_reserved)
        torch.set_num_threads(threads)
        self.loaded = load_model(
            self.settings.model, self.settings.device, self.settings.dtype, gpu_reserved=gpu_reserved
        )
        self.engine = Seq2SeqEngine(
            self.loaded.model, self.settings.max_input_tokens, decode_graphs=self.settings.decode_graphs
        )
        lanes = lane_count(self.settings.scheduler_lanes, self.loaded.device.type, threads)
        gpu_share = replica_gpu_share() if gpu_reserved else None
        limit_gpu_share(self.loaded.device, gpu_share)
        memory = row_budget(
            self.engine.decoder.shape,
            self.settings.max_input_tokens,
            MAX_NEW_TOKENS,
            free_device_bytes(self.loaded.device, gpu_share),
        )
        self.lane_row_limit = max(1, memory.rows // lanes)  # config.yaml's max_batch_rows is capped to it, per lane
        logger.info("ModelReplica memory: %s; at most %d row(s) per lane", memory.reason, self.lane_row_limit)
        # A request that could not start before the ingress gives up is refused at once (503).
        schedulers = [
            Scheduler(
                self.engine,
                SchedulerConfig().within_rows(self.lane_row_limit),
                deadline_s=self.settings.request_timeout_s,
                row_limit=self.lane_row_limit,
                config_follows=True,  # Serve calls reconfigure with config.yaml's user_config before any request
            )
            for _ in range(lanes)
        ]
        metrics = SchedulerMetrics(lanes)
        self.lanes = Lanes(schedulers, cores=threads, on_iteration=metrics.record, on_idle=metrics.flush)
        self._configured = False
        logger.info(
            "ModelReplica ready: %s; %d scheduler lane(s) on %d torch thread(s)", self.loaded.describe(), lanes, threads
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live scheduler budgets from config.yaml's user_config (no restart)."""
        asked = SchedulerConfig.model_validate(user_config or {})
        config = asked.within_rows(self.lane_row_limit)
        self.lanes.reconfigure(config)
        capped = f" (max_batch_rows {asked.max_batch_rows} capped to what memory holds)" if config is not asked else ""
        logger.info("ModelReplica scheduler budgets: %s%s", config.model_dump(), capped)
        if not self._configured:
            # Serve marks the replica running when this returns: with decode_graphs, after the lanes have made their
            # batches for these budgets and captured their graphs, so no request waits behind a capture.
            self._configured = True
            if not self.lanes.wait_for_batches(FIRST_BATCH_TIMEOUT_S):
                logger.warning("ModelReplica: the lanes' batches were not made within %.0f s", FIRST_BATCH_TIMEOUT_S)

    # Each request is validated alone before it joins the batch, so a bad one fails by itself.
    # `background`: dataset jobs and bulk runs, scheduled after interactive work (scheduling/scheduler.py).
    # `trace`: the caller's trace context (serve_app/tracing.py); the request's stages become its spans.
    async def generate(
        self, request: GenerationRequest, background: bool = False, trace: tracing.Carrier | None = None
    ) -> list[list[int]]:
        self.engine.check_request(request)
        times = WorkTimes() if trace else None
        sequences = await self.lanes.generate(request, background, WorkTag(current_request_id(), times))
        if times is not None:
            with tracing.continued(trace):
                rows = request.params.num_return_sequences
                tracing.record("ModelReplica queue", times.enqueued, times.started, background=background)
                tracing.record("ModelReplica prefill", times.started, times.prefilled, tokens=len(request.input_ids))
                tracing.record("ModelReplica decoding", times.prefilled, times.finished, rows=rows)
        return sequences

    async def score(
        self, request: ScoringRequest, background: bool = False, trace: tracing.Carrier | None = None
    ) -> ScoringResult:
        self.engine.check_request(request)
        times = WorkTimes() if trace else None
        result = await self.lanes.score(request, background, WorkTag(current_request_id(), times))
        if times is not None:
            with tracing.continued(trace):
                tracing.record("ModelReplica queue", times.enqueued, times.started, background=background)
                tracing.record("ModelReplica scoring", times.started, times.finished, labels=len(request.label_ids))
        return result

    def describe(self) -> dict[str, Any]:
        return self.loaded.describe()

    def __del__(self) -> None:
        lanes = getattr(self, "lanes", None)
        if lanes is not None:
            lanes.stop(timeout_s=1.0)
