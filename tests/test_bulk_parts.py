"""Bulk jobs, part by part in process: the readers, the resume state, chunking and seeds, and the HTTP runner against a
fake service."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.bulk import http_runner
from serve_app.bulk.http_runner import HttpRunner, ServiceError
from serve_app.bulk.job import Chunk, plan_chunks, run_job
from serve_app.bulk.progress import JobFiles, ResumeError, progress_path
from serve_app.bulk.records import (
    BadRecord,
    InputError,
    Record,
    ResultFormat,
    parse_csv,
    parse_jsonl,
    read_input,
)
from serve_app.bulk.task import Outcome, TaskSpec, parse_labels, record_seed, run_chunk
from serve_app.engine import SamplingParams
from serve_app.engine.errors import EngineInputError
from serve_app.text.errors import TextInputError
from tests.bulk_data import BLANK_LINES, MALFORMED, read_jsonl, sentence, write_jsonl

pytestmark = pytest.mark.unit

# ------------------------------------------------------------------------------ reader


def test_jsonl_reader_keeps_good_records_and_reports_each_bad_line(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "in.jsonl", 1200)
    source = read_input(tmp_path / "in.jsonl")
    records = [item for item in source.items if isinstance(item, Record)]
    bad = {item.line: item for item in source.items if isinstance(item, BadRecord)}

    assert records == good
    assert len(records) == 1200 - len(BLANK_LINES) - 5  # five malformed lines fall within the first 1200
    assert records[99] == Record(101, "r101", sentence(101)) and records[98].id == 100  # 17 is bad, 100 has no id
    assert sorted(bad) == [17, 250, 503, 777, 1001]
    for line, item in bad.items():
        assert MALFORMED[line][1] in item.reason
    assert bad[250].id == "r250" and bad[17].id == 17  # the id when it can be read, else the line number
    assert len(source.sha256) == 64


def test_jsonl_reader_edge_cases() -> None:
    data = "\n".join(
        [
            '{"text": "你好"}',
            '{"id": 7, "text": "再见", "extra": [1, 2]}',
            '{"id": null, "text": "编号为空"}',
            '{"txt": "字段名错了"}',
            '{"text": ["列表"]}',
            '{"text": null}',
            "",
            '"只是字符串"',
            '{"text": "' + "长" * 20_001 + '"}',
            "{}",
        ]
    ).encode()
    items = list(parse_jsonl(data, "text", "id"))
    assert items[:3] == [Record(1, 1, "你好"), Record(2, 7, "再见"), Record(3, 3, "编号为空")]
    reasons = {item.line: item.reason for item in items if isinstance(item, BadRecord)}
    assert reasons == {
        4: "missing field 'text'",
        5: "field 'text' must be a string, got an array",
        6: "field 'text' must be a string, got null",
        8: "expected a JSON object, got a string",
        9: "field 'text' has 20001 characters; at most 20000 are allowed",
        10: "missing field 'text'",
    }
    # another field name for the text and the id
    assert list(parse_jsonl(b'{"key": "k1", "body": "\xe6\xad\xa3\xe6\x96\x87"}', "body", "key")) == [
        Record(1, "k1", "正文")
    ]


def test_csv_reader_line_numbers_quoted_newlines_short_rows_and_bom() -> None:
    text = (
        "\ufeffid,text,note\r\n"
        "a1,物流太慢了,x\r\n"
        'a2,"第一行\r\n第二行",y\r\n'  # a quoted cell over two lines: the next record starts on line 5
        "a3,质量不错,z\r\n"
        "a4\r\n"  # no text column in this row
        ",没有编号,\r\n"
        "\r\n"
        "a6,   ,\r\n"
        "a7,最后一条\r\n"  # missing trailing column is fine
    )
    items = list(parse_csv(text.encode("utf-8").removeprefix(b"\xef\xbb\xbf"), "text", "id"))
    assert [item for item in items if isinstance(item, Record)] == [
        Record(2, "a1", "物流太慢了"),
        Record(3, "a2", "第一行\r\n第二行"),
        Record(5, "a3", "质量不错"),
        Record(7, 7, "没有编号"),
        Record(10, "a7", "最后一条"),
    ]
    bad = [(item.line, item.id, item.reason) for item in items if isinstance(item, BadRecord)]
    assert bad == [
        (6, "a4", "row has 1 fields, the header 3: no value for column 'text'"),
        (9, "a6", "field 'text' is empty"),
    ]


def test_csv_reader_bad_utf8_costs_one_record(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbfid,text\n1,\xe5\xa5\xbd\n2,\xff\xfe\n3,\xe5\x9d\x8f\n")  # BOM, good, bad bytes, good
    items = read_input(path).items
    assert items == [Record(2, "1", "好"), BadRecord(3, "2", "not valid UTF-8"), Record(4, "3", "坏")]


def test_tsv_and_other_column_names(tmp_path: Path) -> None:
    path = tmp_path / "in.tsv"
    path.write_text("key\tbody\nk1\t第一条\nk2\t第二条\n", encoding="utf-8")
    assert read_input(path, text_field="body", id_field="key").items == [
        Record(2, "k1", "第一条"),
        Record(3, "k2", "第二条"),
    ]


def test_unusable_inputs_stop_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("hello\n")
    with pytest.raises(InputError, match="unknown extension '.txt'"):
        read_input(tmp_path / "in.txt")
    (tmp_path / "in.csv").write_text("id,content\n1,你好\n", encoding="utf-8")
    with pytest.raises(InputError, match="no column 'text'.*--text-field"):
        read_input(tmp_path / "in.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    assert read_input(tmp_path / "empty.csv").items == []


# ------------------------------------------------------------------------ output, chunks, seeds


def test_csv_results_json_encode_lists_and_read_back() -> None:
    fmt = ResultFormat("csv", ["id", "text", "label", "labels", "scores", "truncated"])
    row = {
        "id": 3,
        "text": '引号"和,逗号\n换行',
        "label": "其他",
        "labels": ["其他", "物流延迟"],
        "scores": [0.75, 0.25],
        "truncated": False,
    }
    parsed = list(csv.DictReader(io.StringIO((fmt.header() + fmt.row(row)).decode("utf-8"))))
    assert parsed == [
        {
            "id": "3",
            "text": '引号"和,逗号\n换行',
            "label": "其他",
            "labels": '["其他", "物流延迟"]',
            "scores": "[0.75, 0.25]",
            "truncated": "false",
        }
    ]
    assert json.loads(parsed[0]["labels"]) == ["其他", "物流延迟"]
    assert (
        ResultFormat("jsonl", ["id", "text"]).row({"id": "a", "text": "中文", "extra": 1})
        == '{"id": "a", "text": "中文"}\n'.encode()
    )


def _items(n: int, bad: set[int]) -> list[Record | BadRecord]:
    return [BadRecord(i, i, "bad") if i in bad else Record(i, i, f"文本{i}") for i in range(1, n + 1)]


def test_chunks_skip_bad_records_and_are_the_same_after_a_resume() -> None:
    items = _items(100, bad={1, 5, 6, 50, 99, 100})
    chunks = plan_chunks(items, 0, max_records=8)
    assert [len(chunk.records) for chunk in chunks] == [8] * 11 + [6]
    assert [r.line for chunk in chunks for r in chunk.records] == [i.line for i in items if isinstance(i, Record)]
    assert chunks[0].end == 11 and chunks[-1].end == 98  # just past each chunk's last good record (lines 11 and 98)
    # resuming after any chunk plans exactly the remaining chunks of the full plan
    for index, chunk in enumerate(chunks):
        assert plan_chunks(items, chunk.end, max_records=8) == chunks[index + 1 :]
    # a byte budget also cuts chunks (each text here is 7-9 UTF-8 bytes)
    by_bytes = plan_chunks(items, 0, max_records=50, max_bytes=30)
    assert all(
        3 <= len(chunk.records) <= 4 and sum(len(r.text.encode()) for r in chunk.records) <= 30
        for chunk in by_bytes[:-1]
    )


def test_record_seed_depends_on_job_seed_and_line_only() -> None:
    assert record_seed(None, 5) is None
    assert record_seed(11, 5) == record_seed(11, 5)
    seeds = {record_seed(11, line) for line in range(1, 5001)}
    assert len(seeds) == 5000 and all(0 <= seed < 2**63 for seed in seeds)
    assert record_seed(12, 5) != record_seed(11, 5)
    spec = TaskSpec("augment", sampling=SamplingParams(num_return_sequences=2, seed=11))
    assert spec.record_params(5) == SamplingParams(num_return_sequences=2, seed=record_seed(11, 5))


def test_labels_and_task_validation() -> None:
    assert parse_labels("物流延迟,商品缺货，质量问题 , ,其他") == ("物流延迟", "商品缺货", "质量问题", "其他")
    with pytest.raises(TextInputError, match="between 2 and 50"):
        TaskSpec("classify", labels=("只有一个",))
    with pytest.raises(TextInputError, match="distinct"):
        TaskSpec("classify", labels=("重复", "重复"))


def test_actor_pool_uses_every_gpu_else_the_cpus() -> None:
    from serve_app.bulk.ray_runner import PoolPlan, plan_pool

    assert plan_pool({"CPU": 32, "GPU": 4}, 16, "auto", None) == PoolPlan(
        workers=4, num_gpus=1, num_cpus=1, torch_threads=None
    )
    assert plan_pool({"CPU": 32, "GPU": 4}, 16, "auto", 8).num_gpus == 0.5  # two workers per GPU
    assert plan_pool({"CPU": 32, "GPU": 4}, 16, "cpu", None).num_gpus == 0  # --device cpu leaves the GPUs alone
    assert plan_pool({"CPU": 2}, 2, "auto", None) == PoolPlan(workers=2, num_gpus=0, num_cpus=1, torch_threads=1)
    assert plan_pool({"CPU": 64}, 16, "auto", None) == PoolPlan(workers=16, num_gpus=0, num_cpus=4, torch_threads=4)
    assert plan_pool({"CPU": 16}, 16, "auto", 3) == PoolPlan(workers=3, num_gpus=0, num_cpus=5, torch_threads=5)


# -------------------------------------------------------------------------- resume (in process)


class FakeRunner:
    """Answers every text with its reverse; optionally stops (like Ctrl+C) before chunk `stop_at`."""

    def __init__(self, stop_at: int | None = None, refuse: str | None = None) -> None:
        self.stop_at = stop_at
        self.refuse = refuse
        self.chunks_seen: list[Chunk] = []

    def run(self, chunks: Sequence[Chunk]) -> Iterator[list[Outcome]]:
        for index, chunk in enumerate(chunks):
            if index == self.stop_at:
                raise KeyboardInterrupt
            self.chunks_seen.append(chunk)
            yield [
                Outcome(error="text: refused")
                if r.text == self.refuse
                else Outcome(answer={"augmented_texts": [r.text[::-1]], "truncated": False})
                for r in chunk.records
            ]


def _job(
    tmp_path: Path,
    name: str,
    items: list[Record | BadRecord],
    runner: FakeRunner,
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
    fmt: str = "jsonl",
) -> Path:
    output = tmp_path / f"{name}.{fmt}"
    columns = ["id", "text", "augmented_texts", "truncated"]
    result_format = ResultFormat(fmt, columns)  # type: ignore[arg-type]
    files = JobFiles(
        output, tmp_path / f"{name}.errors.jsonl", settings or {"task": "fake"}, header=result_format.header()
    )
    files.open(overwrite)
    try:
        run_job(items, files, result_format, runner, chunk_records=7)
    finally:
        files.close()
    return output


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_interrupted_job_resumes_without_loss_or_duplicates(tmp_path: Path, fmt: str) -> None:
    items = _items(200, bad={3, 40, 41, 200})
    straight = _job(tmp_path, "straight", items, FakeRunner(refuse="文本77"), fmt=fmt)

    with pytest.raises(KeyboardInterrupt):
        _job(tmp_path, "resumed", items, FakeRunner(stop_at=9, refuse="文本77"), fmt=fmt)
    output = tmp_path / f"resumed.{fmt}"
    state = json.loads(progress_path(output).read_text())
    assert state["next_item"] == 9 * 7 + 3  # nine chunks of 7 good records, and bad records 3, 40 and 41 among them
    # a crash in the middle of writing the next chunk leaves a torn tail past the committed length
    with output.open("ab") as handle:
        handle.write(b'{"id": 999, "text": "torn')
    with (tmp_path / "resumed.errors.jsonl").open("ab") as handle:
        handle.write(b'{"line": 4')

    runner = FakeRunner(refuse="文本77")
    _job(tmp_path, "resumed", items, runner, fmt=fmt)
    assert runner.chunks_seen[0].records[0].line == state["next_item"] + 1  # nothing done twice
    assert output.read_bytes() == straight.read_bytes()
    assert (tmp_path / "resumed.errors.jsonl").read_bytes() == (tmp_path / "straight.errors.jsonl").read_bytes()
    assert not progress_path(output).exists()
    errors = read_jsonl(tmp_path / "straight.errors.jsonl")
    assert [(e["line"], e["error"]) for e in errors] == [
        (3, "bad"),
        (40, "bad"),
        (41, "bad"),
        (77, "text: refused"),
        (200, "bad"),
    ]


def test_existing_outputs_are_never_silently_replaced(tmp_path: Path) -> None:
    items = _items(30, bad=set())
    _job(tmp_path, "out", items, FakeRunner())
    with pytest.raises(ResumeError, match="already exists.*--overwrite"):
        _job(tmp_path, "out", items, FakeRunner())  # finished: same command refuses
    _job(tmp_path, "out", items, FakeRunner(), overwrite=True)

    with pytest.raises(KeyboardInterrupt):
        _job(tmp_path, "part", items, FakeRunner(stop_at=2), settings={"task": "fake", "seed": 1})
    with pytest.raises(ResumeError, match=r"other settings \(changed: seed\)"):
        _job(tmp_path, "part", items, FakeRunner(), settings={"task": "fake", "seed": 2})
    _job(tmp_path, "part", items, FakeRunner(), settings={"task": "fake", "seed": 2}, overwrite=True)
    assert len(read_jsonl(tmp_path / "part.jsonl")) == 30


def test_an_engine_refusal_fails_only_its_own_record() -> None:
    class Pipeline:
        calls: list[list[str]] = []

        def classify(self, texts: list[str], labels: list[str], mode: str, scoring: str) -> list[dict[str, Any]]:
            self.calls.append(texts)
            if "坏" in texts:
                raise EngineInputError("text", "is refused")
            return [{"sequence": text, "label": labels[0]} for text in texts]

    pipeline = Pipeline()
    spec = TaskSpec("classify", labels=("甲", "乙"))
    outcomes = run_chunk(pipeline, spec, [1, 2, 3], ["好", "坏", "行"])  # type: ignore[arg-type]
    assert outcomes == [
        Outcome(answer={"sequence": "好", "label": "甲"}),
        Outcome(error="text: is refused"),
        Outcome(answer={"sequence": "行", "label": "甲"}),
    ]
    assert pipeline.calls == [["好", "坏", "行"], ["好"], ["坏"], ["行"]]


# -------------------------------------------------------------------------- HTTP runner (fake service)


def _records(n: int) -> list[Record]:
    return [Record(i, i, f"文本{i}") for i in range(1, n + 1)]


def _classify_answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(
        200,
        json={
            "results": [
                {"sequence": t, "label": "甲", "labels": ["甲", "乙"], "scores": [0.6, 0.4], "truncated": False}
                for t in body["texts"]
            ]
        },
    )


def test_http_runner_retries_503_as_told_by_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(http_runner.time, "sleep", sleeps.append)
    attempts = []

    def service(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        attempts.append(json.loads(request.content)["texts"])
        if len(attempts) <= 2:
            return httpx.Response(503, headers={"Retry-After": "3"}, json={"detail": "busy"})
        return _classify_answer(request)

    spec = TaskSpec("classify", labels=("甲", "乙"))
    with HttpRunner("http://svc", spec, concurrency=1, transport=httpx.MockTransport(service)) as runner:
        (outcomes,) = list(runner.run([Chunk(_records(3), 3)]))
    assert [o.answer["sequence"] for o in outcomes] == ["文本1", "文本2", "文本3"]  # type: ignore[index]
    assert attempts == [["文本1", "文本2", "文本3"]] * 3  # the same request, resent
    assert sleeps == [3.0, 3.0]


def test_http_runner_gives_up_after_bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(http_runner.time, "sleep", sleeps.append)

    def service(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        return httpx.Response(503, json={"detail": "busy"})  # no Retry-After: exponential backoff

    spec = TaskSpec("classify", labels=("甲", "乙"))
    with HttpRunner("http://svc", spec, concurrency=1, retries=3, transport=httpx.MockTransport(service)) as runner:
        with pytest.raises(ServiceError, match="503 after 3 retries"):
            list(runner.run([Chunk(_records(2), 2)]))
    assert sleeps == [1.0, 2.0, 4.0]


def test_http_runner_422_costs_only_the_refused_text() -> None:
    def service(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if "文本2" in json.loads(request.content)["texts"]:
            return httpx.Response(
                422, json={"detail": [{"field": "texts.0", "msg": "is refused", "type": "value_error"}]}
            )
        return _classify_answer(request)

    spec = TaskSpec("classify", labels=("甲", "乙"))
    with HttpRunner("http://svc", spec, transport=httpx.MockTransport(service)) as runner:
        (outcomes,) = list(runner.run([Chunk(_records(3), 3)]))
    assert [o.error for o in outcomes] == [None, "text: is refused", None]
    assert outcomes[2].answer["sequence"] == "文本3"  # type: ignore[index]


def test_http_runner_keeps_chunk_order_with_requests_in_flight() -> None:
    def service(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        time.sleep(random.Random(request.content).uniform(0, 0.03))  # answers finish out of order
        return _classify_answer(request)

    records = _records(200)
    chunks = [Chunk(records[i : i + 5], i + 5) for i in range(0, 200, 5)]
    spec = TaskSpec("classify", labels=("甲", "乙"))
    with HttpRunner("http://svc", spec, concurrency=6, transport=httpx.MockTransport(service)) as runner:
        answers = [o.answer["sequence"] for outcomes in runner.run(chunks) for o in outcomes]  # type: ignore[index]
    assert answers == [r.text for r in records]


def test_http_runner_sends_the_api_key_and_explains_a_401() -> None:
    def service(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if request.headers.get("authorization") != "Bearer s3cret":
            return httpx.Response(401, json={"detail": "missing or invalid API key"})
        return _classify_answer(request)

    spec = TaskSpec("classify", labels=("甲", "乙"))
    with HttpRunner("http://svc", spec, api_key="s3cret", transport=httpx.MockTransport(service)) as runner:
        assert len(list(runner.run([Chunk(_records(2), 2)]))) == 1
    with HttpRunner("http://svc", spec, transport=httpx.MockTransport(service)) as runner:
        with pytest.raises(ServiceError, match="wants an API key: set MT5_API_KEY"):
            list(runner.run([Chunk(_records(2), 2)]))


def test_seeded_augment_over_http_sends_each_record_its_own_seed() -> None:
    bodies = []

    def service(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(
            200, json={"augmented_texts": [["改写"]] * len(body["texts"]), "truncated": [False] * len(body["texts"])}
        )

    spec = TaskSpec("augment", sampling=SamplingParams(num_return_sequences=3, max_new_tokens=8, seed=11))
    with HttpRunner("http://svc", spec, transport=httpx.MockTransport(service)) as runner:
        records = [Record(7, "a", "第一条"), Record(9, "b", "第二条"), Record(12, "c", "第三条")]
        list(runner.run([Chunk(records[:2], 2), Chunk(records[2:], 3)]))
    # Seeded records still travel many to a request, each with the seed of its own input line.
    by_first_text = {body["texts"][0]: body for body in bodies}
    assert by_first_text["第一条"]["texts"] == ["第一条", "第二条"]
    assert by_first_text["第一条"]["seeds"] == [record_seed(11, 7), record_seed(11, 9)]
    assert by_first_text["第三条"]["seeds"] == [record_seed(11, 12)]
    assert all("seed" not in body and body["num_return_sequences"] == 3 and body["max_length"] == 8 for body in bodies)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--keep-label"], "--keep-label"),
        (["--labels", "物流延迟,商品缺货"], "--keep-label"),
        (["--keep-label", "--labels", "物流延迟"], "--labels"),
        (["--keep-label", "--labels", "物流延迟,商品缺货", "--label", "\x07"], "--label"),
        (["--num", "3", "--keep-label", "--labels", "物流延迟,商品缺货", "--max-candidates", "2"], "--max-candidates"),
        (["--min-distance", "1.5"], "--min-distance"),
    ],
)
def test_keep_label_flags_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    """mt5-bulk's own entry point (serve_app.bulk.cli.main): a bad flag is a usage error naming it, before any file or
    model is touched."""
    from serve_app.bulk.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["augment", str(tmp_path / "in.jsonl"), str(tmp_path / "never.jsonl"), *flags, "--model", "demo"])
    assert exit_.value.code == 2
    assert f"{named}: " in capsys.readouterr().err
    assert not (tmp_path / "never.jsonl").exists()


@pytest.mark.unit
def test_evaluate_plans_its_passes_and_refuses_a_file_with_one_gold_label(tmp_path: Path) -> None:
    from serve_app.bulk.evaluate import plan_passes
    from serve_app.bulk.task import TaskSpec

    spec = TaskSpec("evaluate", labels=("物流", "质量", "服务"), wordings=(("物流", ("快递", "发货")),))
    passes = plan_passes(spec, tmp_path / "out.csv", tmp_path / "out.csv.errors.jsonl")
    assert [p.name for p in passes] == ["answers", "repeat", "wording 物流 -> 快递", "wording 物流 -> 发货"]
    assert passes[1].chunk_shift == 1 and passes[1].output.name == "out.csv.repeat.jsonl"
    assert passes[3].spec.labels == ("发货", "质量", "服务") and passes[3].spec.wordings == ()
    (tmp_path / "one.jsonl").write_text('{"text": "快递太慢", "label": "物流"}\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "serve_app.bulk", "evaluate", "one.jsonl", "out.jsonl", "--url", "http://127.0.0.1:9"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--labels" in result.stderr, result.stderr
