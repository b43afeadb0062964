"""`mt5-bulk` end to end on the demo model: the real console command as a subprocess.

On a small Ray cluster this module starts (as `--address`), on a local Ray (no address, for the
Ctrl+C test), and against the running service (`--url`, fixture base_url).
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.lib.processes import start_group, stop_group
from serve_app.bulk.progress import progress_path
from serve_app.bulk.records import Record
from serve_app.bulk.task import parse_labels
from tests.answers import assert_same_classification
from tests.bulk_data import (
    AUGMENT_ARGS,
    BIN,
    BLANK_LINES,
    LABELS,
    LABELS_ARG,
    MALFORMED,
    MT5_BULK,
    TOTAL_LINES,
    read_jsonl,
    sentence,
    write_jsonl,
)
from tests.servers import free_port

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def bulk_env() -> dict[str, str]:
    # Token auth on, with a token of this module's own: works on a machine without ~/.ray/auth_token,
    # and an explicit --address needs RAY_AUTH_MODE=token to send it.
    # float32 as the `served` fixture (conftest.py): Ray Data and HTTP answers are compared across batch shapes.
    env = {
        **os.environ,
        "MT5_MODEL": "demo",
        "MT5_DTYPE": "float32",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_DEDUP_LOGS": "0",
    }
    for variable in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(variable, None)
    return env


@pytest.fixture(scope="module")
def ray_address(bulk_env: dict[str, str]) -> Iterator[str]:
    """A 2-CPU Ray cluster of our own for the `--address` runs, stopped (only it) at the end."""
    temp = Path(tempfile.mkdtemp(prefix="mt5b"))  # short: Ray's socket paths must stay under 108 bytes
    port = free_port()
    log_path = temp / "head.log"
    command = [
        str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
        f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp}", "--disable-usage-stats",
    ]  # fmt: skip
    head = start_group(command, log_path, Path.cwd(), bulk_env)
    try:
        deadline = time.monotonic() + 180
        while b"Ray runtime started" not in log_path.read_bytes():
            assert head.poll() is None, f"ray start exited:\n{log_path.read_text(errors='replace')[-3000:]}"
            assert time.monotonic() < deadline, "ray start did not come up in 180 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(head, signal.SIGINT)  # SIGTERM makes `ray start --block` wait ~30 s; SIGINT stops it in ~2
        for _ in range(20):  # workers (own sessions) may still write their last logs for a moment
            shutil.rmtree(temp, ignore_errors=True)
            if not temp.exists():
                break
            time.sleep(0.5)


def bulk(
    args: Sequence[str | Path], env: dict[str, str], cwd: Path, expect: int = 0, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(MT5_BULK), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == expect, f"exit {result.returncode}:\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bulk")


@pytest.fixture(scope="module")
def good_records(workdir: Path) -> list[Record]:
    return write_jsonl(workdir / "in.jsonl")


@pytest.fixture(scope="module")
def classified(workdir: Path, good_records: list[Record], ray_address: str, bulk_env: dict[str, str]) -> Path:
    result = bulk(
        [
            "classify",
            "in.jsonl",
            "classified.jsonl",
            "--labels",
            LABELS_ARG,
            "--model",
            "demo",
            "--address",
            ray_address,
        ],
        bulk_env,
        workdir,
    )
    assert f"wrote {len(good_records)} record(s) to classified.jsonl, {len(MALFORMED)} error(s)" in result.stderr
    assert "records/s" in result.stderr
    return workdir / "classified.jsonl"


@pytest.fixture(scope="module")
def augmented(workdir: Path, good_records: list[Record], ray_address: str, bulk_env: dict[str, str]) -> Path:
    bulk(
        ["augment", "in.jsonl", "augmented.jsonl", *AUGMENT_ARGS, "--model", "demo", "--address", ray_address],
        bulk_env,
        workdir,
    )
    return workdir / "augmented.jsonl"


def test_classify_writes_one_answer_per_good_record_in_input_order(
    classified: Path, good_records: list[Record]
) -> None:
    rows = read_jsonl(classified)
    assert len(rows) == len(good_records) == TOTAL_LINES - len(MALFORMED) - len(BLANK_LINES)
    assert [row["id"] for row in rows] == [record.id for record in good_records]
    assert [row["text"] for row in rows] == [record.text for record in good_records]
    assert rows[99 - 1]["id"] == 100  # a record without an id carries its line number
    for row in rows:
        assert list(row) == ["id", "text", "label", "labels", "scores", "truncated"]
        assert sorted(row["labels"]) == sorted(LABELS) and row["label"] == row["labels"][0]
        assert row["scores"] == sorted(row["scores"], reverse=True) and abs(sum(row["scores"]) - 1) < 1e-5
        assert row["truncated"] is False
    assert not progress_path(classified).exists()


def test_malformed_lines_go_to_the_errors_file_with_their_line_numbers(classified: Path) -> None:
    errors = read_jsonl(classified.with_name("classified.jsonl.errors.jsonl"))
    assert [error["line"] for error in errors] == sorted(MALFORMED)
    for error in errors:
        assert MALFORMED[error["line"]][1] in error["error"]
    assert [error["id"] for error in errors] == [17, "r250", "r503", "r777", 1001, "r1500", 1999]


def test_a_finished_output_is_not_replaced_by_the_same_command(
    classified: Path, ray_address: str, bulk_env: dict[str, str]
) -> None:
    before = classified.read_bytes()
    result = bulk(
        [
            "classify",
            "in.jsonl",
            "classified.jsonl",
            "--labels",
            LABELS_ARG,
            "--model",
            "demo",
            "--address",
            ray_address,
        ],
        bulk_env,
        classified.parent,
        expect=1,
    )
    assert "already exist" in result.stderr and "--overwrite" in result.stderr
    assert classified.read_bytes() == before


def test_seeded_augment_answers(augmented: Path, good_records: list[Record]) -> None:
    rows = read_jsonl(augmented)
    assert [row["id"] for row in rows] == [record.id for record in good_records]
    assert sum(len(row["augmented_texts"]) for row in rows) > len(rows)  # the demo model's random text rarely collides
    for row in rows:
        texts = row["augmented_texts"]
        assert 0 < len(texts) <= 3 and len(set(texts)) == len(texts) and row["text"] not in texts
        assert all(isinstance(text, str) and text for text in texts)


def _interrupt(args: Sequence[str | Path], sig: int, env: dict[str, str], cwd: Path, output: Path) -> dict[str, Any]:
    """Start mt5-bulk, wait until it has committed some but not all records, send `sig`; returns the saved progress."""
    process = start_group([str(MT5_BULK), *map(str, args)], cwd / f"{output.name}.log", cwd, env)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, "mt5-bulk ended before it could be interrupted"
            assert time.monotonic() < deadline, "no progress within 300 s"
            try:
                done = json.loads(progress_path(cwd / output).read_text())["next_item"]
            except FileNotFoundError:
                done = 0
            if done > 0:
                break
            time.sleep(0.05)
        process.send_signal(sig)
        returncode = process.wait(timeout=120)
    finally:
        stop_group(process, signal.SIGKILL)
    assert returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    state = json.loads(progress_path(cwd / output).read_text())
    assert 0 < state["next_item"] < TOTAL_LINES
    return state


def test_ctrl_c_then_rerun_gives_the_same_bytes_as_one_run(
    augmented: Path, workdir: Path, bulk_env: dict[str, str]
) -> None:
    """On a local Ray (no --address): SIGINT mid-job, then the same command again."""
    args = ["augment", "in.jsonl", "interrupted.jsonl", *AUGMENT_ARGS, "--model", "demo"]
    state = _interrupt(args, signal.SIGINT, bulk_env, workdir, Path("interrupted.jsonl"))
    assert "Run the same command again to resume" in (workdir / "interrupted.jsonl.log").read_text()

    result = bulk(args, bulk_env, workdir)
    assert f"resuming interrupted.jsonl: {state['next_item']} of" in result.stderr
    assert (workdir / "interrupted.jsonl").read_bytes() == augmented.read_bytes()
    assert (workdir / "interrupted.jsonl.errors.jsonl").read_bytes() == (
        workdir / "augmented.jsonl.errors.jsonl"
    ).read_bytes()
    assert not progress_path(workdir / "interrupted.jsonl").exists()


def test_kill_9_then_rerun_gives_the_same_bytes_as_one_run(
    augmented: Path, workdir: Path, ray_address: str, bulk_env: dict[str, str]
) -> None:
    args = ["augment", "in.jsonl", "killed.jsonl", *AUGMENT_ARGS, "--model", "demo", "--address", ray_address]
    state = _interrupt(args, signal.SIGKILL, bulk_env, workdir, Path("killed.jsonl"))
    with (workdir / "killed.jsonl").open("ab") as handle:  # as if the kill landed in the middle of a write
        handle.write('{"id": "r9", "text": "写了一半'.encode())

    result = bulk(args, bulk_env, workdir)
    assert f"resuming killed.jsonl: {state['next_item']} of" in result.stderr
    assert (workdir / "killed.jsonl").read_bytes() == augmented.read_bytes()
    assert (workdir / "killed.jsonl.errors.jsonl").read_bytes() == (
        workdir / "augmented.jsonl.errors.jsonl"
    ).read_bytes()


def test_csv_in_csv_out(workdir: Path, ray_address: str, bulk_env: dict[str, str]) -> None:
    rows = [["编号", "内容"]] + [[f"c{i}", sentence(i)] for i in range(1, 121)]
    rows[10] = ["c10", "第一行\n第二行：快递还没到"]  # a quoted cell spanning two lines
    rows[20] = ["c20"]  # no text column
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    (workdir / "in.csv").write_text(buffer.getvalue(), encoding="utf-8")

    bulk(
        [
            "classify",
            "in.csv",
            "out.csv",
            "--labels",
            LABELS_ARG,
            "--mode",
            "generate",
            "--text-field",
            "内容",
            "--id-field",
            "编号",
            "--address",
            ray_address,
            "--workers",
            "1",
        ],
        bulk_env,
        workdir,
    )
    with (workdir / "out.csv").open(encoding="utf-8", newline="") as handle:
        results = list(csv.DictReader(handle))
    assert [row["id"] for row in results] == [f"c{i}" for i in range(1, 121) if i != 20]
    assert results[9]["text"] == "第一行\n第二行：快递还没到"
    for row in results:
        assert list(row) == ["id", "text", "label", "generated", "truncated"]
        assert row["label"] in LABELS or (row["label"] == "" and row["generated"] not in LABELS)
        assert row["truncated"] == "false"
    (error,) = read_jsonl(workdir / "out.csv.errors.jsonl")
    assert error == {"line": 22, "id": "c20", "error": "row has 1 fields, the header 2: no value for column '内容'"}


def test_url_mode_classifies_like_ray_data(
    classified: Path, workdir: Path, base_url: str, bulk_env: dict[str, str]
) -> None:
    bulk(
        ["classify", "in.jsonl", "classified-http.jsonl", "--labels", LABELS_ARG, "--url", base_url], bulk_env, workdir
    )
    over_http, on_ray = read_jsonl(workdir / "classified-http.jsonl"), read_jsonl(classified)
    assert len(over_http) == len(on_ray)
    for a, b in zip(over_http, on_ray, strict=True):
        assert (a["id"], a["text"]) == (b["id"], b["text"])
        # batches differ (the service merges requests its own way): the same up to float rounding
        assert_same_classification(a, b)
    errors_http = (workdir / "classified-http.jsonl.errors.jsonl").read_bytes()
    assert errors_http == (workdir / "classified.jsonl.errors.jsonl").read_bytes()


def test_url_mode_seeded_augment_matches_ray_data(
    augmented: Path, workdir: Path, base_url: str, bulk_env: dict[str, str]
) -> None:
    # The first 300 lines: each record's seed comes from its line, so these answers equal the first rows of the full
    # run.
    head = b"\n".join((workdir / "in.jsonl").read_bytes().split(b"\n")[:300]) + b"\n"
    (workdir / "head.jsonl").write_bytes(head)
    bulk(
        ["augment", "head.jsonl", "augmented-http.jsonl", *AUGMENT_ARGS, "--url", base_url, "--concurrency", "8"],
        bulk_env,
        workdir,
    )
    over_http = (workdir / "augmented-http.jsonl").read_text(encoding="utf-8").splitlines()
    on_ray = augmented.read_text(encoding="utf-8").splitlines()
    assert len(over_http) == 300 - 2  # lines 17 and 250 are malformed
    assert over_http == on_ray[: len(over_http)]


# ----------------------------------------------------------------------- augmentation that keeps the label
KEEP_LABEL_ARGS = [
    "--num",
    "2",
    "--max-length",
    "10",
    "--seed",
    "5",
    "--keep-label",
    "--labels",
    LABELS_ARG,
    "--min-distance",
    "0.2",
]


def test_keep_label_bulk_job_on_ray_data_and_over_http_agree_with_classify(
    workdir: Path, ray_address: str, base_url: str, bulk_env: dict[str, str]
) -> None:
    head = b"\n".join((workdir / "in.jsonl").read_bytes().split(b"\n")[:12]) + b"\n"
    (workdir / "keep.jsonl").write_bytes(head)
    bulk(
        ["augment", "keep.jsonl", "kept.jsonl", *KEEP_LABEL_ARGS, "--model", "demo", "--address", ray_address],
        bulk_env,
        workdir,
    )
    bulk(["augment", "keep.jsonl", "kept-http.jsonl", *KEEP_LABEL_ARGS, "--url", base_url], bulk_env, workdir)
    on_ray, over_http = read_jsonl(workdir / "kept.jsonl"), read_jsonl(workdir / "kept-http.jsonl")
    assert len(on_ray) == len(over_http) == 12
    labels = list(parse_labels(LABELS_ARG))
    for a, b in zip(on_ray, over_http, strict=True):
        assert set(a) == {"id", "text", "augmented_texts", "truncated", "label", "label_scores", "candidates"}
        assert (a["id"], a["augmented_texts"], a["label"], a["candidates"]) == (
            b["id"],
            b["augmented_texts"],
            b["label"],
            b["candidates"],
        )
        assert a["label_scores"] == pytest.approx(b["label_scores"], abs=1e-5)
        for text in a["augmented_texts"]:
            answer = httpx.post(f"{base_url}/classify", json={"text": text, "labels": labels}, timeout=60).json()
            assert answer["label"] == a["label"]
