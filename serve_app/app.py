"""Build the Serve application from config.yaml's args (its `import_path` is serve_app.app:build_app)."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from serve_app.deployments.augmenter import Augmenter
from serve_app.deployments.classifier import Classifier
from serve_app.deployments.ingress import Ingress
from serve_app.deployments.model_replica import ModelReplica
from serve_app.settings import AppSettings

logger = logging.getLogger("ray.serve")


def cluster_gpus() -> float:
    """GPUs the Ray cluster declares now (0 when Ray is not initialised)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


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
    gpus = replica_gpus(settings, cluster_gpus())
    logger.info("building mt5 app: model=%s device=%s dtype=%s replica_gpus=%s", settings.model, settings.device, settings.dtype, gpus)
    shared = settings.model_dump()
    replica = ModelReplica.options(ray_actor_options={"num_cpus": 1, "num_gpus": gpus}).bind(shared)
    classifier = Classifier.bind(shared, replica)
    augmenter = Augmenter.bind(shared, replica)
    return Ingress.bind(shared, classifier, augmenter, replica)
