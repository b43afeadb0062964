"""Many teams on one service: named API keys with limits held across Ingress replicas, the request id through every
layer, JSON logs, and the classification cache.

The service test runs the shipped config.yaml with three Ingress replicas, a named-keys file and JSON logs; the
unit tests hold the rules themselves (usage windows, the keys file, the request-id middleware, the cache).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from serve_app.access.keys import KeyLimits, KeyTable, key_digest, read_named_keys, team_of
from serve_app.access.usage import DAY_S, Usage
from serve_app.ingress.request_id import RequestIds
from serve_app.text.answer_cache import AnswerCache, classification_key
from tests.servers import ServeRun, replica_processes, service

LIMITED_KEY = "team-a-secret-0123456789"
OPEN_KEY = "team-b-secret-0123456789"
TOKEN_KEY = "team-c-secret-0123456789"
SPARE_KEY = "team-d-secret-0123456789"  # unlimited, never removed: whatever the other keys used up, it still works
JOB_KEY = "team-e-secret-0123456789"  # a daily token budget that one augment job spends
PER_MINUTE = 30
TOKENS_PER_DAY = 20
INGRESS_REPLICAS = 3
HEX_ID = re.compile(r"[0-9a-f]{32}")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keys_entries(*, with_open_key: bool = True) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = [
        {"name": "team-a", "key_sha256": key_digest(LIMITED_KEY), "requests_per_minute": PER_MINUTE},
        {"name": "team-c", "key_sha256": key_digest(TOKEN_KEY), "generated_tokens_per_day": TOKENS_PER_DAY},
    ]
    if with_open_key:
        entries.append({"name": "team-b", "key_sha256": key_digest(OPEN_KEY)})
    entries.append({"name": "team-d", "key_sha256": key_digest(SPARE_KEY)})
    entries.append({"name": "team-e", "key_sha256": key_digest(JOB_KEY), "generated_tokens_per_day": TOKENS_PER_DAY})
    return entries


# ----------------------------------------------------------------------------------------------- the rules, in-process
class Clock:
    def __init__(self, now: float = 10 * DAY_S + 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.unit
def test_a_key_gets_its_limit_per_sliding_minute_and_others_are_unaffected() -> None:
    clock = Clock()
    usage = Usage(clock)
    limited = KeyLimits(requests_per_minute=3)
    for _ in range(3):
        assert usage.admit("a", limited) is None
        clock.now += 10
    refusal = usage.admit("a", limited)
    assert refusal is not None and (refusal.limit, refusal.allowed) == ("requests_per_minute", 3)
    assert refusal.retry_after_s == 30  # the first request (30 s ago) leaves the window in 30 s
    assert "3 requests per minute" in refusal.detail
    assert usage.admit("b", limited) is None  # another key: its own window
    assert usage.admit("c", KeyLimits()) is None
    clock.now += 30  # the first request is 60 s old now: one slot again, and only one
    assert usage.admit("a", limited) is None
    assert usage.admit("a", limited) is not None


@pytest.mark.unit
def test_a_key_over_its_daily_tokens_is_refused_until_midnight_utc() -> None:
    clock = Clock(10 * DAY_S + DAY_S - 100)  # 100 s before midnight UTC
    usage = Usage(clock)
    limits = KeyLimits(generated_tokens_per_day=50)
    assert usage.admit("a", limits) is None
    usage.charge("a", 49)
    assert usage.admit("a", limits) is None  # under: the request that crosses the limit still runs
    usage.charge("a", 30)
    refusal = usage.admit("a", limits)
    assert refusal is not None and (refusal.limit, refusal.allowed, refusal.retry_after_s) == (
        "generated_tokens_per_day",
        50,
        100,
    )
    assert usage.tokens_today("a") == 79
    assert usage.admit("a", limits, generates=False) is None  # reading its jobs is not refused for tokens
    clock.now += 100  # a new day
    assert usage.admit("a", limits) is None and usage.tokens_today("a") == 0


@pytest.mark.unit
def test_the_keys_file_is_reread_when_it_changes_and_a_broken_edit_keeps_the_last_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(keys_entries()))
    clock = Clock(0.0)
    table = KeyTable("single-key", str(path), clock=clock)
    assert table.enabled
    team_a = table.caller(LIMITED_KEY.encode())
    assert team_a is not None and (team_a.name, team_a.owner) == ("team-a", "team:team-a")
    assert (
        team_of(team_a.owner) == "team-a" and team_of("key:0123456789abcdef") is None and team_of("anonymous") is None
    )
    assert team_a.limits == KeyLimits(requests_per_minute=PER_MINUTE)
    single = table.caller(b"single-key")
    assert single is not None and single.name == "default" and single.limits.unlimited
    assert single.owner == "key:" + key_digest("single-key")[:16]  # the owner of jobs made before named keys
    assert table.caller(b"nobody") is None
    path.write_text(yaml.safe_dump(keys_entries(with_open_key=False)))
    assert table.caller(OPEN_KEY.encode()) is not None  # looked at again only after RELOAD_CHECK_S
    clock.now += 1.5
    assert table.caller(OPEN_KEY.encode()) is None
    path.write_text("- name: [broken")
    clock.now += 1.5
    assert table.caller(LIMITED_KEY.encode()) is not None  # the last good keys stay
    path.unlink()
    clock.now += 1.5
    assert table.caller(LIMITED_KEY.encode()) is None and table.caller(b"single-key") is not None


@pytest.mark.unit
@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "a", "key_sha256": "abc"}], "entry 0.key_sha256: .*64 hex digits"),
        ([{"name": "a b", "key_sha256": key_digest("x")}], "entry 0.name: .*letters, digits"),
        ([{"name": "a", "key_sha256": key_digest("x"), "requests_per_minute": 0}], "entry 0.requests_per_minute"),
        ([{"name": "a", "key_sha256": key_digest("x"), "key": "x"}], "entry 0.key: Extra inputs"),
        (
            [{"name": "a", "key_sha256": key_digest("x")}, {"name": "a", "key_sha256": key_digest("y")}],
            "name a appears more than once",
        ),
        ({"name": "a"}, "Input should be a valid list"),
    ],
)
def test_a_bad_keys_file_names_the_entry_and_the_rule(tmp_path: Path, entries: Any, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(entries))
    with pytest.raises(ValueError, match=message):
        read_named_keys(path)
    with pytest.raises(ValueError, match=message):
        KeyTable(None, str(path))  # at start-up it stops the Ingress with the same message


def request_id_app() -> TestClient:
    app = FastAPI()
    app.get("/ok")(lambda: {"ok": True})
    app.get("/missing")(lambda: JSONResponse(status_code=404, content={"detail": "no such thing"}))
    app.get("/text-error")(lambda: JSONResponse(status_code=400, content=["not", "an", "object"]))
    return TestClient(RequestIds(app))


@pytest.mark.unit
def test_every_error_body_names_the_request_id_and_an_insane_id_is_replaced() -> None:
    client = request_id_app()
    mine = "client-id_42:/~"
    missing = client.get("/missing", headers={"X-Request-ID": mine})
    assert missing.status_code == 404 and missing.json() == {"detail": "no such thing", "request_id": mine}
    assert int(missing.headers["content-length"]) == len(missing.content)
    assert client.get("/ok", headers={"X-Request-ID": mine}).json() == {"ok": True}  # success bodies are left alone
    assert client.get("/text-error").json() == ["not", "an", "object"]  # not an object: nothing to add it to
    for insane in ("x" * 129, "has space", "tab\there", "ünïcode"):
        answer = client.get("/missing", headers={"X-Request-ID": insane.encode("utf-8")})
        generated = answer.json()["request_id"]
        assert HEX_ID.fullmatch(generated) and answer.headers["x-request-id"] == generated
    assert client.get("/missing", headers={"X-Request-ID": "y" * 128}).json()["request_id"] == "y" * 128


@pytest.mark.unit
def test_the_cache_is_a_bounded_lru_of_answers_as_they_were_given() -> None:
    cache = AnswerCache(max_entries=2, max_bytes=10_000)
    answer = {"label": "物流", "scores": {"物流": 0.9, "美食": 0.1}}
    cache.put("a", answer)
    answer["label"] = "changed by the caller"
    assert cache.get("a") == {"label": "物流", "scores": {"物流": 0.9, "美食": 0.1}}
    cache.put("b", {"n": 1})
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", {"n": 2})
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    small = AnswerCache(max_entries=100, max_bytes=500)
    for index in range(10):
        small.put(str(index), {"text": "字" * 20})
    assert 0 < len(small) < 10 and small.bytes <= 500
    off = AnswerCache(max_entries=0, max_bytes=500)
    off.put("a", {"n": 1})
    assert not off.enabled and off.get("a") is None
    base = ("model", "template", "vocabulary", ["物流", "美食"], "text")
    key = classification_key(*base)
    assert key == classification_key(*base)
    assert key != classification_key("model", "template", "vocabulary", ["美食", "物流"], "text")  # label order
    assert key != classification_key("model", "template", "label_tokens", ["物流", "美食"], "text")  # scoring
    assert key != classification_key("model", "template", "vocabulary", ["物流美", "食"], "text")  # the cut


@pytest.mark.unit
def test_the_scheduler_names_the_request_ids_it_cancels(engine, tok, caplog) -> None:
    from serve_app.engine import GenerationRequest, SamplingParams
    from serve_app.scheduling.scheduler import Scheduler, WorkTag

    scheduler = Scheduler(engine)
    request = GenerationRequest(tok("物流太慢了").input_ids, SamplingParams(max_new_tokens=8))
    ticket = scheduler.submit_generation(request, lambda result, error: None, tag=WorkTag("req-cancelled-1"))
    scheduler.cancel(ticket)
    with caplog.at_level(logging.INFO, logger="serve_app.scheduling.scheduler"):
        scheduler.run_iteration()
    [record] = [r for r in caplog.records if "cancelled by their callers" in r.getMessage()]
    assert "[request req-cancelled-1]" in record.getMessage()
    assert getattr(record, "request_id", None) == "req-cancelled-1"  # the field Serve's JSON log lines carry


# ------------------------------------------------------------------------------------------------ the real service
@pytest.fixture(scope="module")
def teams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeRun, Path]]:
    workdir = tmp_path_factory.mktemp("teams")
    keys_file = workdir / "keys.yaml"
    keys_file.write_text(yaml.safe_dump(keys_entries()))
    three = {"min_replicas": INGRESS_REPLICAS, "max_replicas": INGRESS_REPLICAS, "initial_replicas": INGRESS_REPLICAS}
    with service(
        workdir,
        overrides={"Ingress": {"autoscaling_config": three}},
        env={"MT5_API_KEYS_FILE": str(keys_file), "MT5_DTYPE": "float32"},
        logging_config={"encoding": "JSON"},
    ) as run:
        yield run, keys_file


@pytest.mark.service
def test_a_limited_key_gets_its_requests_per_minute_across_three_ingress_replicas(teams) -> None:
    run, _ = teams
    assert len(replica_processes(run, "Ingress")) == INGRESS_REPLICAS
    statuses = []
    refused: httpx.Response | None = None
    with httpx.Client(base_url=run.url, timeout=60) as other:
        for _ in range(PER_MINUTE + 5):
            # A fresh connection each time: the proxy spreads them over the three Ingress replicas.
            answer = httpx.get(f"{run.url}/tasks", headers=bearer(LIMITED_KEY), timeout=60)
            statuses.append(answer.status_code)
            refused = answer if answer.status_code == 429 else refused
            assert other.get("/tasks", headers=bearer(OPEN_KEY)).status_code == 200
    assert statuses == [200] * PER_MINUTE + [429] * 5, statuses
    assert refused is not None and 1 <= int(refused.headers["retry-after"]) <= 60
    body = refused.json()
    assert (body["limit"], body["allowed"]) == ("requests_per_minute", PER_MINUTE)
    assert (
        f"{PER_MINUTE} requests per minute" in body["detail"] and body["request_id"] == refused.headers["x-request-id"]
    )


@pytest.mark.service
def test_a_key_over_its_daily_tokens_gets_429_naming_that_limit(teams) -> None:
    run, _ = teams
    body = {"text": "这家店的物流太慢了", "num_return_sequences": 2, "max_length": 16, "seed": 1}
    first = httpx.post(f"{run.url}/augment", json=body, headers=bearer(TOKEN_KEY), timeout=60)
    assert first.status_code == 200  # under the limit when it started; its tokens are charged after
    deadline = time.monotonic() + 10
    while True:  # the charge reaches the KeyLedger a moment after the answer
        answer = httpx.post(f"{run.url}/augment", json=body, headers=bearer(TOKEN_KEY), timeout=60)
        if answer.status_code == 429 or time.monotonic() > deadline:
            break
    assert answer.status_code == 429, answer.text
    assert answer.json()["limit"] == "generated_tokens_per_day" and answer.json()["allowed"] == TOKENS_PER_DAY
    assert int(answer.headers["retry-after"]) <= DAY_S
    assert httpx.post(f"{run.url}/augment", json=body, headers=bearer(OPEN_KEY), timeout=60).status_code == 200


@pytest.mark.service
def test_a_job_belongs_to_its_key(teams) -> None:
    run, _ = teams
    data = "text\n物流太慢了\n这家面馆很好吃\n".encode()
    created = httpx.post(
        f"{run.url}/jobs",
        files={"file": ("two.csv", data)},
        data={"task": "classify", "params": json.dumps({"labels": ["物流", "美食"]})},
        headers=bearer(OPEN_KEY),
        timeout=60,
    )
    assert created.status_code == 202, created.text
    job = created.headers["location"]
    assert httpx.get(f"{run.url}{job}", headers=bearer(OPEN_KEY), timeout=30).status_code == 200
    assert httpx.get(f"{run.url}{job}", headers=bearer(SPARE_KEY), timeout=30).status_code == 404
    listed = httpx.get(f"{run.url}/jobs", headers=bearer(SPARE_KEY), timeout=30).json()["jobs"]
    assert all(view["id"] not in job for view in listed)


@pytest.mark.service
def test_the_tokens_a_job_generates_count_against_its_key(teams) -> None:
    run, _ = teams
    data = "text\n物流太慢了\n这家面馆很好吃\n今天天气很好\n".encode()
    params = {"num_return_sequences": 2, "max_length": 16, "seed": 1}
    created = httpx.post(
        f"{run.url}/jobs",
        files={"file": ("three.csv", data)},
        data={"task": "augment", "params": json.dumps(params)},
        headers=bearer(JOB_KEY),
        timeout=60,
    )
    assert created.status_code == 202, created.text
    job = created.headers["location"]
    deadline = time.monotonic() + 120
    while (state := httpx.get(f"{run.url}{job}", headers=bearer(JOB_KEY), timeout=30).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    # The job ran to the end (a budget is checked when a request arrives), and its key still reads it; the key's
    # next request that would generate is over the day's budget, once the JobRunner's charge reached the KeyLedger.
    assert state["status"] == "succeeded", state
    assert httpx.get(f"{run.url}{job}/result", headers=bearer(JOB_KEY), timeout=30).status_code == 200
    body = {"text": "物流太慢了", "num_return_sequences": 1, "max_length": 8}
    deadline = time.monotonic() + 10
    while (
        answer := httpx.post(f"{run.url}/augment", json=body, headers=bearer(JOB_KEY), timeout=60)
    ).status_code == 200:
        assert time.monotonic() < deadline, "the job's tokens never reached the key's budget"
        time.sleep(0.3)
    assert answer.status_code == 429 and answer.json()["limit"] == "generated_tokens_per_day"
    assert httpx.get(f"{run.url}/tasks", headers=bearer(JOB_KEY), timeout=30).status_code == 200


@pytest.mark.service
def test_request_ids_come_back_and_the_model_replica_logs_name_them_as_json(teams) -> None:
    run, _ = teams
    mine = f"team-b-trace-{uuid.uuid4().hex[:12]}"
    answer = httpx.post(
        f"{run.url}/classify",
        json={"text": "物流太慢了，三天还没到", "labels": ["物流", "美食"]},
        headers={**bearer(OPEN_KEY), "X-Request-ID": mine},
        timeout=60,
    )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == mine
    bad = httpx.post(
        f"{run.url}/classify",
        json={"text": "x", "labels": ["only one"]},
        headers={**bearer(OPEN_KEY), "X-Request-ID": "bad-1"},
        timeout=60,
    )
    assert bad.status_code == 422 and bad.json()["request_id"] == "bad-1" and bad.headers["x-request-id"] == "bad-1"
    generated = httpx.get(f"{run.url}/tasks", headers=bearer(OPEN_KEY), timeout=30).headers["x-request-id"]
    assert generated
    unknown = httpx.get(f"{run.url}/tasks", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert unknown.status_code == 401 and unknown.json()["request_id"] == unknown.headers["x-request-id"]

    def model_replica_lines() -> list[dict[str, Any]]:
        """Lines naming our id in every ModelReplica log file of this machine's Ray sessions (the id is unique)."""
        records = []
        for path in Path(tempfile.gettempdir(), "ray").glob("session_*/logs/serve/replica_mt5_ModelReplica_*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if mine in line:
                    records.append(json.loads(line))  # every line is JSON: logging_config.encoding
        return records

    deadline = time.monotonic() + 30
    while not model_replica_lines() and time.monotonic() < deadline:
        time.sleep(0.5)
    records = model_replica_lines()
    assert records, run.log_tail(30)
    assert {record["deployment"] for record in records} == {"mt5_ModelReplica"}
    assert all(record["request_id"] == mine for record in records)
    assert any(record["message"].startswith("CALL score OK") for record in records)


@pytest.mark.service
def test_the_same_classify_batch_twice_is_answered_from_the_cache_byte_for_byte(teams) -> None:
    run, _ = teams
    texts = [f"第{index}个包裹三天了还没到，物流太慢" for index in range(50)]
    body = {"texts": texts, "labels": ["物流", "美食", "天气"]}
    with httpx.Client(base_url=run.url, headers=bearer(OPEN_KEY), timeout=120) as client:
        first = client.post("/classify_batch", json=body)
        second = client.post("/classify_batch", json=body)
        reordered = client.post("/classify_batch", json={**body, "labels": ["美食", "物流", "天气"]})
        other_scoring = client.post("/classify_batch", json={**body, "scoring": "label_tokens"})
        generated = client.post("/classify_batch", json={**body, "mode": "generate"})
    assert first.status_code == second.status_code == 200
    assert first.headers["x-mt5-cached"] == "0" and second.headers["x-mt5-cached"] == "50"
    assert second.content == first.content
    assert reordered.headers["x-mt5-cached"] == "0" and other_scoring.headers["x-mt5-cached"] == "0"
    assert "x-mt5-cached" not in generated.headers  # never for mode: generate


@pytest.mark.service
def test_a_key_removed_from_the_file_is_refused_within_seconds(teams) -> None:
    run, keys_file = teams
    assert httpx.get(f"{run.url}/tasks", headers=bearer(OPEN_KEY), timeout=30).status_code == 200
    keys_file.write_text(yaml.safe_dump(keys_entries(with_open_key=False)))
    removed_at = time.monotonic()
    refused_after = None
    while time.monotonic() - removed_at < 15:
        # every Ingress replica must have noticed: a few requests in a row, spread over fresh connections
        if all(
            httpx.get(f"{run.url}/tasks", headers=bearer(OPEN_KEY), timeout=30).status_code == 401 for _ in range(6)
        ):
            refused_after = time.monotonic() - removed_at
            break
        time.sleep(0.2)
    assert refused_after is not None and refused_after <= 5, refused_after
    assert httpx.get(f"{run.url}/tasks", headers=bearer(SPARE_KEY), timeout=30).status_code == 200
