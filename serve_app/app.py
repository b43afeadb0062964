"""Build the Serve application from config.yaml's args (its `import_path` is serve_app.app:build_app)."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve import Deployment

from serve_app.deployments.classifier import Classifier
from serve_app.deployments.generator import Generator
from serve_app.deployments.job_runner import JobRunner
from serve_app.deployments.key_ledger import KeyLedger
from serve_app.deployments.model_replica import ModelReplica
from serve_app.deployments.placement import (
    alive_node_cpus,
    cluster_gpus,
    model_replica_cpus,
)
from serve_app.engine.spec import resolve_spec
from serve_app.ingress.ingress import Ingress
from serve_app.settings import AppSettings

logger = logging.getLogger("ray.serve")


def as_deployment(decorated: object) -> Deployment:
    """A `@serve.deployment` class as what it is at run time (Ray's stubs leave it typed as the class)."""
    if not isinstance(decorated, Deployment):
        raise TypeError(f"{decorated!r} is not a Serve deployment")
    return decorated


def cluster_nodes() -> list[dict[str, Any]]:
    """The Ray cluster's nodes now (none when Ray is not initialised)."""
    import ray

    return ray.nodes() if ray.is_initialized() else []


def replica_gpus(settings: AppSettings, available: float) -> float:
    """GPUs each ModelReplica asks for.

    "auto" asks for one only where the cluster has GPUs now, so the same file runs on a
    laptop; a number is always asked for, so an autoscaler can bring GPU nodes up from zero.
    """
    if settings.replica_gpus == "auto":
        return 1.0 if available > 0 else 0.0
    return float(settings.replica_gpus)


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    settings = AppSettings.from_args(args)
    # Resolve (and fetch) the model here, once, before any replica starts: a spec that cannot be had
    # fails the build with the project's one message (`serve status`) instead of every replica
    # retrying it. Replicas resolve it again on their own node, a cache hit where this ran.
    resolved = resolve_spec(settings.model)
    logger.info("model %r resolved at %s", settings.model, resolved.path)
    nodes = cluster_nodes()
    gpus = replica_gpus(settings, cluster_gpus(nodes))
    cpus = model_replica_cpus(gpus, alive_node_cpus(nodes))
    logger.info(
        "building mt5 app: model=%s device=%s dtype=%s; each ModelReplica reserves %s CPU and %s GPU",
        settings.model,
        settings.device,
        settings.dtype,
        cpus,
        gpus,
    )
    shared = settings.model_dump()
    replica = as_deployment(ModelReplica).options(ray_actor_options={"num_cpus": cpus, "num_gpus": gpus}).bind(shared)
    classifier = as_deployment(Classifier).bind(shared, replica)
    generator = as_deployment(Generator).bind(shared, replica)
    key_ledger = as_deployment(KeyLedger).bind()
    job_runner = as_deployment(JobRunner).bind(shared, replica, key_ledger)
    return as_deployment(Ingress).bind(shared, classifier, generator, replica, job_runner, key_ledger)
