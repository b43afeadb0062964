"""The job store and a job's resume, in one process on the demo model: a local directory and an S3-compatible
server (moto's, started on loopback), each interrupted mid-job and resumed to the bytes of an uninterrupted run."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.jobs.dataset import read_dataset
from serve_app.jobs.runner import JobLimits, JobRun, input_name, result_name
from serve_app.jobs.state import JobState
from serve_app.jobs.store import JobStore
from serve_app.pipeline import Pipeline
from serve_app.settings import AppSettings
from tests.bulk_data import write_jsonl

pytestmark = pytest.mark.unit

LIMITS = JobLimits(chunk_records=8, chunks_in_flight=2)
PARAMS = {"num_return_sequences": 2, "max_length": 8, "seed": 3}


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(AppSettings(model="demo", dtype="float32"))


@pytest.fixture(scope="module")
def s3_uri() -> Iterator[str]:
    """A bucket on moto's S3 server on loopback; s3fs reaches it through AWS_ENDPOINT_URL_S3, as a user's would."""
    import boto3  # with moto, a test dependency (pyproject.toml)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")}
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    )
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="mt5-jobs")
    try:
        yield "s3://mt5-jobs/team-a"
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        server.stop()


def new_job(store: JobStore, data: bytes, job_id: str) -> JobState:
    total = len(read_dataset(data, "in.jsonl", "text", "id").items)
    state = JobState(id=job_id, owner="anonymous", task="augment", params=PARAMS, filename="in.jsonl", total=total)
    store.create(state, input_name(state), data)
    return state


def run(store: JobStore, job_id: str, pipeline: Pipeline, stop_after_chunks: int | None = None) -> JobState | None:
    """The job to the end, or (stop_after_chunks) stopped as a crashed runner stops: mid-job, nothing said."""

    async def go() -> JobState | None:
        job = JobRun(store, job_id, pipeline.text_tasks, pipeline, "vocabulary", LIMITS)
        task = asyncio.ensure_future(job.run())
        if stop_after_chunks is None:
            return await task
        while len(store.chunks(job_id)) < stop_after_chunks:
            await asyncio.sleep(0.01)
        task.cancel()  # the runner's process is gone: its state stays `running`
        await asyncio.gather(task, return_exceptions=True)
        return None

    return asyncio.run(go())


@pytest.mark.parametrize("where", ["directory", "s3"])
def test_an_interrupted_job_resumes_to_the_bytes_of_an_uninterrupted_run(
    where: str, tmp_path: Path, pipeline: Pipeline, request: pytest.FixtureRequest
) -> None:
    write_jsonl(tmp_path / "in.jsonl", lines=120)
    data = (tmp_path / "in.jsonl").read_bytes()
    reference_store = JobStore(str(tmp_path / "reference"))
    new_job(reference_store, data, "ref")
    finished = run(reference_store, "ref", pipeline)
    assert finished is not None and finished.status == "succeeded"
    reference = reference_store.result("ref", result_name(finished))
    assert reference is not None and len(reference.splitlines()) == finished.total - finished.errors

    store = JobStore(request.getfixturevalue("s3_uri") if where == "s3" else str(tmp_path / "store"))
    state = new_job(store, data, f"job{where}")
    run(store, state.id, pipeline, stop_after_chunks=3)
    interrupted = store.load(state.id)
    assert interrupted is not None and interrupted.status == "running" and 0 < interrupted.done < interrupted.total
    resumed = run(store, state.id, pipeline)
    assert resumed is not None and resumed.status == "succeeded" and resumed.resumed == 1
    assert store.result(state.id, result_name(resumed)) == reference
    assert store.errors(state.id) == reference_store.errors("ref")
    assert [job.id for job in store.states()][0] == state.id  # newest first
    assert store.chunks(state.id) == {}  # joined into the result, then dropped
    store.delete(state.id)
    assert store.load(state.id) is None and state.id not in store.job_ids()


def test_a_cancel_marker_stops_a_job_and_a_bad_id_names_no_path(tmp_path: Path, pipeline: Pipeline) -> None:
    store = JobStore(str(tmp_path / "store"))
    write_jsonl(tmp_path / "in.jsonl", lines=40)
    state = new_job(store, (tmp_path / "in.jsonl").read_bytes(), "tocancel")
    store.request_cancel(state.id)
    stopped = run(store, state.id, pipeline)
    assert stopped is not None and stopped.status == "cancelled" and stopped.done == 0
    assert json.loads((tmp_path / "store" / state.id / "state.json").read_text())["status"] == "cancelled"
    assert store.load("../etc") is None and store.load("") is None
