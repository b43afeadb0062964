"""Where ModelReplicas fit: what one reserves, and the autoscaling cap on CPU-only clusters."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.deployments.autoscaling import placeable_model_replicas
from serve_app.deployments.placement import (
    alive_node_cpus,
    model_replica_cpus,
    replicas_that_fit,
)

pytestmark = pytest.mark.unit


def node(cpus: float, gpus: float = 0.0, alive: bool = True) -> dict[str, Any]:
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return {"Alive": alive, "Resources": resources}


def test_a_cpu_only_replica_reserves_a_whole_node_and_a_gpu_replica_one_cpu():
    assert model_replica_cpus(0.0, [2.0]) == 2.0
    assert model_replica_cpus(0.0, [16.0, 4.0]) == 4.0  # it must fit on the smallest node
    assert model_replica_cpus(0.5, [2.0]) == 1.0
    assert model_replica_cpus(0.0, []) == 1.0  # Ray not started (an import, a unit test)


def test_the_light_deployments_reserve_no_cpu_in_the_shipped_config():
    import yaml

    from tests.servers import CONFIG

    deployments = {d["name"]: d for d in yaml.safe_load(CONFIG.read_text())["applications"][0]["deployments"]}
    for name in ("Ingress", "Classifier", "Generator"):
        assert deployments[name]["ray_actor_options"]["num_cpus"] == 0, name
    policy = deployments["ModelReplica"]["autoscaling_config"]["policy"]["policy_function"]
    assert policy == "serve_app.deployments.autoscaling:model_replicas_that_fit"


def test_dead_and_cpu_less_nodes_hold_no_replica():
    nodes = [node(2.0), node(8.0, alive=False), node(0.0)]
    assert alive_node_cpus(nodes) == [2.0]


def test_the_autoscaling_cap_is_what_the_cpu_nodes_hold():
    assert placeable_model_replicas([node(2.0)]) == 1  # a 2-core laptop: one replica, never a pending second
    assert placeable_model_replicas([node(4.0), node(4.0), node(9.0)]) == 4  # 4-CPU replicas: 1 + 1 + 2
    assert replicas_that_fit([4.0, 4.0, 9.0], 4.0) == 4


def test_with_gpu_nodes_the_node_autoscaler_decides():
    assert placeable_model_replicas([node(8.0), node(8.0, gpus=1.0)]) is None
