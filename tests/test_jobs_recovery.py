"""A dataset job outlives what runs it: a ModelReplica killed mid-job, and the whole service stopped (Ctrl+C) and
started again mid-job. Either way the job finishes with the bytes of an uninterrupted run: no record lost or
written twice.

A service of this module's own (two start-ups share one job store), the shipped config.yaml on the demo model.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.bulk_data import write_jsonl
from tests.servers import replica_processes, service
from tests.test_jobs import submit, wait_for

pytestmark = pytest.mark.service

PARAMS = {"num_return_sequences": 3, "max_length": 40, "seed": 11}  # long enough to outlast Serve's drain on Ctrl+C


def started_job(url: str, data: bytes, until_done: float = 0.1) -> str:
    """A seeded augment job over `data`, once it has done `until_done` of its records (and not all)."""
    response = submit(url, "in.jsonl", data, "augment", PARAMS)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
        if state["done"] >= until_done * state["total"]:
            assert state["status"] == "running", state  # still going: the interruption lands mid-job
            return job_id
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not get going: {state}")


def result(url: str, job_id: str) -> bytes:
    state = wait_for(url, job_id, timeout_s=600)
    assert state["status"] == "succeeded", state
    assert state["done"] == state["total"]
    answer = httpx.get(f"{url}/jobs/{job_id}/result", timeout=60)
    assert answer.status_code == 200
    return answer.content


def test_a_job_survives_a_killed_model_replica_and_a_service_restart(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "in.jsonl", lines=1200)
    data = (tmp_path / "in.jsonl").read_bytes()
    env = {"MT5_DTYPE": "float32", "MT5_JOBS_STORE": str(tmp_path / "store")}  # both start-ups: one store

    with service(tmp_path / "first", env=env) as run:
        reference = result(run.url, started_job(run.url, data, until_done=0))
        ids = [json.loads(line)["id"] for line in reference.splitlines()]
        assert ids == [record.id for record in good]  # every good record once, in input order

        job_id = started_job(run.url, data)
        [victim] = replica_processes(run, "ModelReplica")
        os.kill(victim.pid, signal.SIGKILL)
        assert result(run.url, job_id) == reference

        interrupted = started_job(run.url, data)
        started = time.monotonic()
        run.stop(signal.SIGINT)  # Ctrl+C, as a user stops the service
        print(f"stopped in {time.monotonic() - started:.1f} s")

    with service(tmp_path / "second", env=env) as run:
        state = httpx.get(f"{run.url}/jobs/{interrupted}", timeout=30).json()
        assert state["done"] < state["total"], state  # the stop came mid-job, not after it
        assert result(run.url, interrupted) == reference
        state = httpx.get(f"{run.url}/jobs/{interrupted}", timeout=30).json()
        assert state["resumed"] >= 1
