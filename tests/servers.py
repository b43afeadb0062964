"""The real service for tests: one factory that runs `serve run` on config.yaml, and what a test reads of it.

`service(...)` is the only way a test starts the service: the shipped config.yaml on a loopback
port, with the changes a test asks for (deployment options, app args, environment), started,
yielded, stopped. It runs through bench/lib/serve_run.py, the same code the benchmarks use to
run the service as a user runs it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.lib.serve_run import CONFIG, ROOT, SERVE, ServeRun, free_port, shipped_config

__all__ = [
    "CONFIG",
    "ROOT",
    "SERVE",
    "ServeRun",
    "free_port",
    "shipped_config",
    "service",
    "guarded_service",
    "replica_processes",
    "load_client",
]


@contextmanager
def service(
    workdir: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
    args: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 240,
    logging_config: dict[str, Any] | None = None,
) -> Iterator[ServeRun]:
    """`serve run` on config.yaml with `overrides` per deployment, `args` for the app, `env`, and changes to its
    `logging_config`; on the demo model unless env says otherwise."""
    env = {"MT5_JOBS_STORE": str(workdir / "jobs"), **(env or {})}  # each service its own job store
    config = shipped_config(free_port(), overrides, args)
    config["logging_config"].update(logging_config or {})
    run = ServeRun(config, workdir, env=env)
    run.start(timeout_s=timeout_s)
    try:
        yield run
    finally:
        run.stop(signal.SIGTERM)  # no test here is about Serve's graceful drain, which takes ~10 s


# The guarded service: an API key and one CORS origin, as behind a public load balancer, and one replica per
# deployment with short queues and a short request timeout, so overload, timeouts and lost replicas are quick to reach.
GUARD_KEY = "s3cret-key-for-tests-0123456789"
GUARD_AUTH = {"Authorization": f"Bearer {GUARD_KEY}"}
GUARD_ORIGIN = "http://allowed.example"
GUARD_TIMEOUT_S = 6  # short, with room for the 2-core box where a flood's HTTP work competes with the model
SINGLE = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}


def guarded_service(workdir: Path) -> contextlib.AbstractContextManager[ServeRun]:
    overrides = {
        "ModelReplica": {
            "max_ongoing_requests": 4,
            "max_queued_requests": 4,
            "user_config": {"max_batch_rows": 4},
            "autoscaling_config": SINGLE,
        },
        "Classifier": {"autoscaling_config": SINGLE},
        "Generator": {"autoscaling_config": SINGLE},
        "Ingress": {"autoscaling_config": SINGLE},
    }
    args = {"request_timeout_s": GUARD_TIMEOUT_S, "cors_allow_origins": [GUARD_ORIGIN]}
    return service(workdir, overrides, args, env={"MT5_API_KEY": GUARD_KEY})


def replica_processes(run: ServeRun, deployment: str) -> list[psutil.Process]:
    """This run's replica processes of one deployment (never another cluster's)."""
    return run.processes(f"ServeReplica:mt5:{deployment}")


def load_client(
    url: str, timeout_s: float, connections: int, headers: dict[str, str] | None = None
) -> aiohttp.ClientSession:
    """The load generator's HTTP client. aiohttp, not httpx: httpx's AsyncClient drops connections now and
    then at a few hundred concurrent requests (encode/httpx#3348), which would read as the service's fault.

    A hang is `timeout_s` without a byte from the service (or without a free client connection),
    not a total: in an open-loop flood much of a request's life is spent queued in this client.
    """
    timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
    return aiohttp.ClientSession(
        base_url=url, timeout=timeout, connector=aiohttp.TCPConnector(limit=connections), headers=headers
    )
