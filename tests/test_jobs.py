"""Dataset jobs over HTTP (POST /jobs and friends) against the real service on the demo model (fixture `served`).

The results are compared with what `mt5-bulk --url` writes for the same file and arguments, byte for byte,
and an evaluation's report with the metrics computed here from /classify_batch answers on the same file.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bulk_data import AUGMENT_ARGS, LABELS, LABELS_ARG, MT5_BULK, write_jsonl

pytestmark = pytest.mark.service

FINISHED = {"succeeded", "failed", "cancelled"}


def submit(base_url: str, name: str, data: bytes, task: str, params: dict[str, Any] | str) -> httpx.Response:
    body = params if isinstance(params, str) else json.dumps(params, ensure_ascii=False)
    return httpx.post(f"{base_url}/jobs", files={"file": (name, data)}, data={"task": task, "params": body}, timeout=60)


def wait_for(base_url: str, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = httpx.get(f"{base_url}/jobs/{job_id}", timeout=30).json()
        if state["status"] in FINISHED:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {state['status']} after {timeout_s} s: {state}")


def run_job(base_url: str, name: str, data: bytes, task: str, params: dict[str, Any]) -> dict[str, Any]:
    response = submit(base_url, name, data, task, params)
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["location"] == f"/jobs/{created['id']}"
    assert created["status"] in ("queued", "running") and created["total"] > 0
    state = wait_for(base_url, created["id"])
    assert state["status"] == "succeeded", state
    return state


def mt5_bulk_over_http(base_url: str, workdir: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "MT5_API_KEY"}  # the served fixture has none
    result = subprocess.run(
        [str(MT5_BULK), *args, "--url", base_url], env=env, cwd=workdir, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs")
    write_jsonl(path / "in.jsonl", lines=300)  # 300 lines, two of them malformed (tests/bulk_data.py)
    return path


def test_a_classify_job_writes_the_bytes_mt5_bulk_writes(base_url: str, workdir: Path) -> None:
    data = (workdir / "in.jsonl").read_bytes()
    state = run_job(base_url, "in.jsonl", data, "classify", {"labels": LABELS, "scoring": "vocabulary"})
    assert state["done"] == state["total"] and state["errors"] == 2 and state["records_per_s"] > 0
    mt5_bulk_over_http(base_url, workdir, ["classify", "in.jsonl", "classified.jsonl", "--labels", LABELS_ARG])
    result = httpx.get(f"{base_url}/jobs/{state['id']}/result", timeout=30)
    assert result.status_code == 200 and result.headers["content-type"].startswith("application/x-ndjson")
    assert result.content == (workdir / "classified.jsonl").read_bytes()
    errors = httpx.get(f"{base_url}/jobs/{state['id']}/errors", timeout=30)
    assert errors.content == (workdir / "classified.jsonl.errors.jsonl").read_bytes()
    assert [json.loads(line)["line"] for line in errors.text.splitlines()] == [17, 250]


def test_a_seeded_augment_job_on_a_csv_writes_the_bytes_mt5_bulk_writes(base_url: str, workdir: Path) -> None:
    rows = ["id,text"] + [
        f'c{i},"{text}"' for i, text in enumerate(["物流太慢了，等了一周", "耳机有杂音", "客服很耐心"] * 12)
    ]
    rows.insert(5, "c-bad")  # a row without its text: one error line, the job goes on
    (workdir / "in.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    params = {"num_return_sequences": 3, "max_length": 8, "seed": 11}
    state = run_job(base_url, "in.csv", (workdir / "in.csv").read_bytes(), "augment", params)
    assert state["errors"] == 1
    mt5_bulk_over_http(base_url, workdir, ["augment", "in.csv", "augmented.csv", *AUGMENT_ARGS])
    result = httpx.get(f"{base_url}/jobs/{state['id']}/result", timeout=30)
    assert result.headers["content-type"].startswith("text/csv")
    assert result.content == (workdir / "augmented.csv").read_bytes()


def test_an_evaluation_reports_what_the_classify_answers_say(base_url: str, tmp_path: Path) -> None:
    texts = ["快递一周还没到", "物流太慢了", "耳机坏了", "质量太差", "客服态度很好", "好", "没货了", "什么时候补货"]
    labels = ["物流延迟", "质量问题", "服务态度", "商品缺货"]
    answers = httpx.post(f"{base_url}/classify_batch", json={"texts": texts, "labels": labels}, timeout=60).json()
    predicted = [answer["label"] for answer in answers["results"]]
    # Gold labels planted so that some answers are right and some wrong, whatever the (random) demo model says.
    gold = [
        predicted[i] if i % 3 else labels[(labels.index(predicted[i]) + 1) % len(labels)] for i in range(len(texts))
    ]
    lines = [json.dumps({"text": t, "label": g}, ensure_ascii=False) for t, g in zip(texts, gold, strict=True)]
    data = ("\n".join(lines) + "\n").encode()
    state = run_job(
        base_url, "sample.jsonl", data, "evaluate", {"labels": labels, "wordings": {"物流延迟": ["快递慢"]}}
    )
    report = state["report"]
    right = [g == p for g, p in zip(gold, predicted, strict=True)]
    assert report["records"] == len(texts)
    assert report["accuracy"] == pytest.approx(sum(right) / len(texts))
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[labels.index(g)][labels.index(p)] += 1
    assert report["confusion"] == {"labels": labels, "matrix": matrix}
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, predicted, strict=True))
        support, called = gold.count(label), predicted.count(label)
        assert report["per_label"][label]["support"] == support
        assert report["per_label"][label]["precision"] == pytest.approx(tp / called if called else 0.0)
        assert report["per_label"][label]["recall"] == pytest.approx(tp / support if support else 0.0)
    short = [i for i, text in enumerate(texts) if len(text) <= 5]
    assert report["short_texts"]["records"] == len(short)
    assert report["short_texts"]["accuracy"] == pytest.approx(sum(right[i] for i in short) / len(short))
    assert report["repeatability"] == 1.0  # the same answers in another batch (README, "Precision")
    assert set(report["wordings"]["物流延迟"]["f1"]) == {"物流延迟", "快递慢"}
    result = httpx.get(f"{base_url}/jobs/{state['id']}/result", timeout=30).text.splitlines()
    assert [json.loads(line)["gold"] for line in result] == gold

    # mt5-bulk evaluate on the same file: the same answers and the same report
    workdir = tmp_path
    (workdir / "sample.jsonl").write_bytes(data)
    labels_arg, wordings = ",".join(labels), json.dumps({"物流延迟": ["快递慢"]}, ensure_ascii=False)
    args = ["evaluate", "sample.jsonl", "scored.jsonl", "--labels", labels_arg, "--wordings", wordings]
    mt5_bulk_over_http(base_url, workdir, args)
    assert json.loads((workdir / "scored.jsonl.report.json").read_text(encoding="utf-8")) == report
    job_result = httpx.get(f"{base_url}/jobs/{state['id']}/result", timeout=30).content
    assert (workdir / "scored.jsonl").read_bytes() == job_result


@pytest.mark.parametrize(
    ("name", "data", "task", "params", "field"),
    [
        ("bad.jsonl", b'{"text": "\xe5\xbf\xab\xff"}\n', "classify", {"labels": LABELS}, "file"),
        ("no-text.csv", "id,内容\n1,物流太慢\n".encode(), "classify", {"labels": LABELS}, "params.text_field"),
        ("empty.jsonl", b"", "classify", {"labels": LABELS}, "file"),
        ("all-bad.jsonl", b"{oops\n[1]\n", "augment", {}, "file"),
        ("data.xlsx", b"PK\x03\x04", "classify", {"labels": LABELS}, "file"),
        ("in.jsonl", b'{"text": "x"}\n', "classify", {"labels": ["只有一个"]}, "params.labels"),
        ("in.jsonl", b'{"text": "x"}\n', "augment", {"temprature": 0.5}, "params.temprature"),
        ("in.jsonl", b'{"text": "x"}\n', "augment", "not json", "params"),
        ("in.jsonl", b'{"text": "x"}\n', "translate", {}, "task"),
        ("in.jsonl", b'{"text": "x", "label": "a"}\n', "evaluate", {}, "file"),  # one gold label: no candidate set
    ],
)
def test_a_file_that_cannot_be_a_dataset_is_refused_at_once_naming_the_field(
    base_url: str, name: str, data: bytes, task: str, params: dict[str, Any] | str, field: str
) -> None:
    before = len(httpx.get(f"{base_url}/jobs", timeout=30).json()["jobs"])
    response = submit(base_url, name, data, task, params)
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["detail"]], response.text
    assert len(httpx.get(f"{base_url}/jobs", timeout=30).json()["jobs"]) == before  # no job was made


def test_an_upload_over_the_limit_is_413_and_the_service_goes_on(base_url: str) -> None:
    data = b'{"text": "' + b"x" * (60 * 1024 * 1024) + b'"}\n'  # 60 MB, over config.yaml's 50 MB
    response = submit(base_url, "big.jsonl", data, "augment", {})
    assert response.status_code == 413
    ok = httpx.post(f"{base_url}/classify", json={"text": "物流太慢了", "labels": LABELS}, timeout=60)
    assert ok.status_code == 200


def test_jobs_are_listed_newest_first_cancelled_and_deleted(base_url: str, workdir: Path) -> None:
    data = (workdir / "in.jsonl").read_bytes()
    long = submit(base_url, "in.jsonl", data, "augment", {"num_return_sequences": 4, "max_length": 200, "seed": 1})
    assert long.status_code == 202
    job_id = long.json()["id"]
    listed = httpx.get(f"{base_url}/jobs", timeout=30).json()["jobs"]
    assert listed[0]["id"] == job_id  # newest first
    time.sleep(2)
    cancelled = httpx.delete(f"{base_url}/jobs/{job_id}", timeout=30)
    assert cancelled.status_code == 202
    started = time.monotonic()
    state = wait_for(base_url, job_id, timeout_s=30)
    assert state["status"] == "cancelled" and time.monotonic() - started < 10
    assert state["done"] < state["total"]
    assert httpx.get(f"{base_url}/jobs/{job_id}/result", timeout=30).status_code == 409
    deleted = httpx.delete(f"{base_url}/jobs/{job_id}", timeout=30)
    assert deleted.status_code == 200
    assert httpx.get(f"{base_url}/jobs/{job_id}", timeout=30).status_code == 404
    assert job_id not in [job["id"] for job in httpx.get(f"{base_url}/jobs", timeout=30).json()["jobs"]]
    assert httpx.get(f"{base_url}/jobs/0123abcd", timeout=30).status_code == 404
    assert httpx.get(f"{base_url}/jobs/..%2F..%2Fetc", timeout=30).status_code == 404


def test_background_priority_gives_the_same_answers(base_url: str) -> None:
    body = {"texts": ["物流太慢了", "耳机有杂音"], "labels": LABELS}
    plain = httpx.post(f"{base_url}/classify_batch", json=body, timeout=60)
    background = httpx.post(
        f"{base_url}/classify_batch", json=body, headers={"X-MT5-Priority": "background"}, timeout=60
    )
    assert plain.status_code == background.status_code == 200
    assert background.json() == plain.json()  # float32 on the CPU: bitwise, whatever the batch (README)
    seeded = {"texts": ["物流太慢了"], "num_return_sequences": 2, "max_length": 8, "seed": 5}
    answers = [
        httpx.post(f"{base_url}/augment_batch", json=seeded, headers={"X-MT5-Priority": p}, timeout=60).json()
        for p in ("interactive", "background")
    ]
    assert answers[0] == answers[1]
    wrong = httpx.post(f"{base_url}/classify_batch", json=body, headers={"X-MT5-Priority": "urgent"}, timeout=60)
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["field"] == "header.X-MT5-Priority"


def test_the_jobs_routes_are_in_the_openapi_document(base_url: str) -> None:
    paths = httpx.get(f"{base_url}/openapi.json", timeout=30).json()["paths"]
    assert {"post", "get"} <= set(paths["/jobs"])
    assert {"get", "delete"} <= set(paths["/jobs/{job_id}"])
    assert "get" in paths["/jobs/{job_id}/result"] and "get" in paths["/jobs/{job_id}/errors"]
    form = paths["/jobs"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form
