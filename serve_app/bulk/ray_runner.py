"""Model work on Ray Data: a pool of actors, each holding one Pipeline, over every GPU (or CPU) of the cluster.

Each dataset row is one whole chunk, so a chunk is exactly one engine batch whatever
Ray Data does with blocks: classification scores move in their last bits with a batch's
padding, and a resumed run must send the same batches to write the same bytes.
preserve_order hands the chunks back in input order while the actors work on several at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.data import ActorPoolStrategy, DataContext
from tqdm import tqdm

from serve_app.bulk.job import Chunk
from serve_app.bulk.task import Outcome, TaskSpec, run_chunk
from serve_app.pipeline import Pipeline
from serve_app.settings import AppSettings

# Torch gains little from intra-op threads on batches this small: two one-thread actors beat one
# two-thread actor on 2 cores (demo model, 10k records: 513 vs 408 records/s). Past a few threads per
# actor, more actors would mostly multiply the model's memory, so threads grow with the node, up to 4.
MAX_CPU_THREADS_PER_WORKER = 4


class ChunkWorker:
    """A Ray Data actor: loads the model once, then answers chunks."""

    def __init__(self, settings: dict[str, Any], spec: TaskSpec, torch_threads: int | None = None) -> None:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.pipeline = Pipeline(AppSettings.model_validate(settings))
        self.spec = spec

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        answers = []
        for payload in batch["payload"]:
            lines, texts = json.loads(payload)
            outcomes = run_chunk(self.pipeline, self.spec, lines, texts)
            answers.append(json.dumps([asdict(outcome) for outcome in outcomes], ensure_ascii=False))
        return {"chunk": batch["chunk"], "outcomes": np.array(answers, dtype=object)}


@dataclass(frozen=True)
class PoolPlan:
    workers: int
    num_gpus: float
    num_cpus: float
    torch_threads: int | None

    def describe(self) -> str:
        if self.num_gpus:
            return f"{self.workers} worker(s), {self.num_gpus:g} GPU each"
        return f"{self.workers} worker(s), {self.torch_threads} CPU thread(s) each"


def plan_pool(resources: dict[str, float], largest_node_cpus: float, device: str, workers: int | None) -> PoolPlan:
    """One actor per GPU; without GPUs (or with device cpu), actors of 1-4 threads (half a node's cores) across the
    CPUs."""
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus and device != "cpu":
        workers = workers or gpus
        # More workers than GPUs share them (a small model can keep several batches on one GPU).
        return PoolPlan(workers=workers, num_gpus=min(1.0, gpus / workers), num_cpus=1, torch_threads=None)
    per_node = max(1, int(largest_node_cpus))
    if workers:
        threads = max(1, min(per_node, cpus // workers))
    else:
        threads = max(1, min(MAX_CPU_THREADS_PER_WORKER, per_node // 2))
        workers = max(1, cpus // threads)
    return PoolPlan(workers=workers, num_gpus=0, num_cpus=threads, torch_threads=threads)


class RayRunner:
    """Attaches to a cluster (--address or RAY_ADDRESS) or starts a local Ray, only when there is work."""

    def __init__(
        self, settings: AppSettings, spec: TaskSpec, address: str | None = None, workers: int | None = None
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.workers = workers
        self.plan: PoolPlan | None = None
        self._owns_ray = False

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._owns_ray:
            ray.shutdown()  # a local Ray goes away with it; an attached cluster keeps running

    def _connect(self) -> None:
        if ray.is_initialized():
            return  # a caller's own Ray session (e.g. a notebook): use it, leave it running
        self._owns_ray = True  # set first: Ctrl+C during a half-done init still shuts down what started
        if self.address:
            try:
                ray.init(address=self.address, logging_level=logging.WARNING)
            except ConnectionError as exc:
                raise ConnectionError(
                    f"{exc}. If the cluster uses token authentication, set RAY_AUTH_MODE=token "
                    "(the token comes from RAY_AUTH_TOKEN or ~/.ray/auth_token)."
                ) from exc
        else:
            # The dashboard costs seconds and memory a batch job on a laptop does not need.
            # address="local": never attach to a cluster some earlier `ray start` left on this machine.
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)

    def run(self, chunks: Sequence[Chunk]) -> Iterator[list[Outcome]]:
        if not chunks:
            return
        self._connect()
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        largest = max((node["Resources"].get("CPU", 0) for node in nodes), default=1)
        self.plan = plan_pool(ray.cluster_resources(), largest, self.settings.device, self.workers)
        tqdm.write(f"mt5-bulk: Ray Data on {len(nodes)} node(s): {self.plan.describe()}", file=sys.stderr)

        _quiet_ray_data_console()
        context = DataContext.get_current()
        context.execution_options.preserve_order = True  # results come back in chunk order
        context.enable_progress_bars = False  # the job's own bar counts records, not blocks

        # JSON strings carry texts and answers through Arrow untouched (nested lists, nulls, mixed id types).
        rows = [
            {
                "chunk": index,
                "payload": json.dumps(
                    [[r.line for r in chunk.records], [r.text for r in chunk.records]], ensure_ascii=False
                ),
            }
            for index, chunk in enumerate(chunks)
        ]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ChunkWorker,
            batch_size=1,
            compute=ActorPoolStrategy(size=self.plan.workers),
            num_cpus=self.plan.num_cpus,
            num_gpus=self.plan.num_gpus,
            fn_constructor_kwargs={
                "settings": self.settings.model_dump(),
                "spec": self.spec,
                "torch_threads": self.plan.torch_threads,
            },
        )
        for expected, row in enumerate(dataset.iter_rows()):
            if row["chunk"] != expected:  # resume relies on order; never write a chunk in the wrong place
                raise RuntimeError(f"Ray Data returned chunk {row['chunk']} where chunk {expected} was due")
            yield [Outcome(**outcome) for outcome in json.loads(row["outcomes"])]


def _quiet_ray_data_console() -> None:
    """Ray Data's INFO lines (execution plans, the disabled-bars notice) would break up the job's progress bar.

    Only its console handler is raised to WARNING; the full log still goes to the session's ray-data.log.
    """
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; the session file handler is not one
            handler.setLevel(logging.WARNING)
            handler.addFilter(lambda record: "Progress bars disabled" not in record.getMessage())
