"""ModelReplica's autoscaling policy: Serve's own, never asking for a replica the cluster cannot place.

On a CPU-only cluster (a laptop, a CPU VM) each ModelReplica reserves a whole
node (placement.py), so Serve's default policy would, under load, ask for
replicas that stay pending forever ("taken more than 30s to be scheduled") and
report the deployment as upscaling. This policy caps the default's answer at
what the alive nodes hold. Where the cluster has GPUs, nodes come and go with a
node autoscaler and the default's answer stands.

config.yaml names it: ModelReplica's `autoscaling_config.policy.policy_function`.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

from serve_app.deployments.placement import (
    alive_node_cpus,
    cluster_gpus,
    model_replica_cpus,
    replicas_that_fit,
)

_NODES_TTL_S = 5.0  # the policy runs every control-loop tick; the node list changes far more slowly
_nodes_cache: tuple[float, list[dict[str, Any]]] = (0.0, [])


def _nodes() -> list[dict[str, Any]]:
    global _nodes_cache
    checked, nodes = _nodes_cache
    if time.monotonic() - checked > _NODES_TTL_S:
        nodes = ray.nodes()
        _nodes_cache = (time.monotonic(), nodes)
    return nodes


def placeable_model_replicas(nodes: list[dict[str, Any]]) -> int | None:
    """How many ModelReplicas the cluster holds now; None where GPU nodes make it the node autoscaler's call."""
    if cluster_gpus(nodes) > 0:
        return None
    cpus = alive_node_cpus(nodes)
    return max(1, replicas_that_fit(cpus, model_replica_cpus(0.0, cpus)))


def model_replicas_that_fit(ctx: AutoscalingContext) -> tuple[int | float, dict[str, Any]]:
    desired, state = replica_queue_length_autoscaling_policy(ctx)
    cap = placeable_model_replicas(_nodes())
    if cap is not None and desired > cap:
        return max(cap, ctx.capacity_adjusted_min_replicas), state
    return desired, state
