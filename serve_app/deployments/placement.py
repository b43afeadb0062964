"""Where a ModelReplica fits: what it reserves on a node, and how many fit on the cluster now.

On a GPU node a replica reserves its GPU share and one CPU. On a CPU node the
engine's torch threads use every core (continuous batching keeps them busy), so
a replica reserves every CPU of a node: two replicas on one CPU node would only
fight over the same cores. The light deployments (Ingress, Classifier,
Generator) reserve no CPU at all (config.yaml), so they can never keep a
ModelReplica from being placed or replaced; they yield the CPU by priority
instead (cpu_priority.py). cluster/README.md, "Resources", explains the choice.
"""

from __future__ import annotations

from typing import Any


def model_replica_cpus(gpus_per_replica: float, node_cpus: list[float]) -> float:
    """CPUs one ModelReplica reserves: 1 beside a GPU, else every CPU of the smallest CPU node."""
    if gpus_per_replica > 0 or not node_cpus:
        return 1.0
    return max(1.0, min(node_cpus))


def replicas_that_fit(node_cpus: list[float], cpus_per_replica: float) -> int:
    """How many CPU-only ModelReplicas the nodes hold at once (a replica never spans nodes)."""
    return sum(int(cpus // cpus_per_replica) for cpus in node_cpus)


def alive_node_cpus(nodes: list[dict[str, Any]]) -> list[float]:
    """CPU counts of the alive nodes that have CPUs, from `ray.nodes()`."""
    return [
        float(node["Resources"].get("CPU", 0.0))
        for node in nodes
        if node.get("Alive") and node["Resources"].get("CPU", 0.0) > 0
    ]


def cluster_gpus(nodes: list[dict[str, Any]]) -> float:
    """GPUs the alive nodes declare now, from `ray.nodes()`."""
    return sum(float(node["Resources"].get("GPU", 0.0)) for node in nodes if node.get("Alive"))
