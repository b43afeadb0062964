"""Traces: off by default with nothing of the exporter loaded; on, one trace per request from the Ingress to the
ModelReplica's scheduler, sent to an OTLP/HTTP collector (a small one on loopback, keeping what it receives in
memory) and continuing the client's W3C traceparent."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.lib.otlp_sink import Collector
from serve_app import tracing
from tests.servers import ServeRun, service

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.mark.unit
def test_tracing_off_loads_no_exporter_and_costs_nothing() -> None:
    probe = (
        "import sys\n"
        "from serve_app import tracing\n"
        "assert not tracing.start_tracing(None, 'Ingress')\n"
        "assert not tracing.enabled() and tracing.carrier() is None\n"
        "with tracing.span('x') as span, tracing.continued({'traceparent': 'x'}):\n"
        "    assert span is None\n"
        "tracing.record('y', 0.0, 1.0)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter.otlp'))))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.fixture
def memory_spans() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer(provider.get_tracer("test"))
    try:
        yield exporter
    finally:
        tracing.use_tracer(None)


@pytest.mark.unit
def test_each_label_keeping_round_is_a_span_of_the_request(memory_spans, demo_model) -> None:
    from serve_app.engine.requests import SamplingParams
    from serve_app.pipeline import Pipeline
    from serve_app.settings import AppSettings
    from serve_app.text.label_keeping import Checks, KeepLabel

    pipeline = Pipeline(AppSettings(model="demo", device="cpu", dtype="float32"), demo_model)
    checks = Checks(keep_label=KeepLabel(labels=["物流", "美食"]))
    with tracing.span("request"):
        asyncio.run(
            pipeline.text_tasks.augment(
                pipeline,
                ["物流太慢了，三天还没到"],
                SamplingParams(num_return_sequences=2, max_new_tokens=12, seed=3),
                checks,
            )
        )
    spans = memory_spans.get_finished_spans()
    [request] = [span for span in spans if span.name == "request"]
    rounds = [span for span in spans if span.name == "keep_label round"]
    assert rounds and all(span.parent.span_id == request.context.span_id for span in rounds)
    assert [span.attributes["round"] for span in rounds] == list(range(1, len(rounds) + 1))


@pytest.mark.unit
def test_the_scheduler_times_each_stage_of_a_request(engine, tok) -> None:
    from serve_app.engine import GenerationRequest, SamplingParams, ScoringRequest
    from serve_app.scheduling.scheduler import Scheduler, WorkTag, WorkTimes

    scheduler = Scheduler(engine)
    generation, scoring = WorkTimes(), WorkTimes()
    ids = tok("物流太慢了").input_ids
    scheduler.submit_generation(
        GenerationRequest(ids, SamplingParams(max_new_tokens=4)), lambda r, e: None, tag=WorkTag(times=generation)
    )
    scheduler.submit_scoring(ScoringRequest(ids, [[259], [260]]), lambda r, e: None, tag=WorkTag(times=scoring))
    while scheduler.outstanding:
        scheduler.run_iteration()
    assert 0 < generation.enqueued <= generation.started <= generation.prefilled < generation.finished
    assert 0 < scoring.enqueued <= scoring.started < scoring.finished and scoring.prefilled == 0.0


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeRun, Collector]]:
    collector = Collector()
    workdir: Path = tmp_path_factory.mktemp("traced")
    try:
        with service(workdir, env={"MT5_OTLP_ENDPOINT": collector.endpoint, "MT5_DTYPE": "float32"}) as run:
            yield run, collector
    finally:
        collector.shutdown()


@pytest.mark.service
def test_one_augment_with_keep_label_is_one_trace_from_the_ingress_to_the_scheduler(traced) -> None:
    run, collector = traced
    body = {
        "text": "物流太慢了，三天还没到",
        "num_return_sequences": 2,
        "max_length": 16,
        "seed": 5,
        "keep_label": {"labels": ["物流", "美食"]},
    }
    headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    answer = httpx.post(f"{run.url}/augment", json=body, headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    wanted = {
        "Ingress POST /augment",
        "Generator.augment",
        "keep_label round",
        "ModelReplica queue",
        "ModelReplica prefill",
        "ModelReplica decoding",
        "ModelReplica scoring",
    }
    deadline = time.monotonic() + 30
    while not wanted <= {span["name"] for span in collector.trace(TRACE_ID)} and time.monotonic() < deadline:
        time.sleep(0.5)
    spans = collector.trace(TRACE_ID)
    names = {span["name"] for span in spans}
    assert wanted <= names, sorted(names)
    by_id = {span["span_id"]: span for span in spans}
    [ingress] = [span for span in spans if span["name"] == "Ingress POST /augment"]
    assert ingress["parent"] == CLIENT_SPAN and ingress["component"] == "Ingress"  # the client's trace continued
    for span in spans:
        if span is not ingress:  # every other span hangs below the Ingress's, in this one trace
            parent = by_id.get(span["parent"])
            while parent is not None and parent is not ingress:
                parent = by_id.get(parent["parent"])
            assert parent is ingress, (span["name"], span["component"])
    [generator] = [span for span in spans if span["name"] == "Generator.augment"]
    stages = [span for span in spans if span["component"] == "ModelReplica"]
    assert {span["component"] for span in spans} == {"Ingress", "Generator", "ModelReplica"}
    assert all(generator["start"] <= span["start"] <= span["end"] <= generator["end"] for span in stages)


@pytest.mark.service
def test_a_classify_is_a_trace_of_the_ingress_the_classifier_and_its_scoring(traced) -> None:
    run, collector = traced
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    headers = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    body = {"text": "这家面馆很好吃", "labels": ["物流", "美食"]}
    assert httpx.post(f"{run.url}/classify", json=body, headers=headers, timeout=60).status_code == 200
    wanted = {"Ingress POST /classify", "Classifier.classify", "ModelReplica queue", "ModelReplica scoring"}
    deadline = time.monotonic() + 30
    while not wanted <= {span["name"] for span in collector.trace(trace_id)} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert wanted <= {span["name"] for span in collector.trace(trace_id)}
