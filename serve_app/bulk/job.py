"""One bulk run: plan chunks from where the last run stopped, write each chunk's results in input order, commit.

A chunk is the unit of model work (one engine batch or one HTTP request) and of
resume: chunks are cut from the good records in input order, the same way on every
run, so a resumed run sends the model the very same batches an uninterrupted run would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm import tqdm

from serve_app.bulk.progress import JobFiles
from serve_app.bulk.records import BadRecord, Item, Record, ResultFormat, error_line
from serve_app.bulk.task import Outcome


@dataclass(frozen=True)
class Chunk:
    records: list[Record]
    end: int  # position in the input just past this chunk's last record


class Runner(Protocol):
    """Does the model work: one list of outcomes per chunk, chunk order kept."""

    def run(self, chunks: Sequence[Chunk]) -> Iterator[list[Outcome]]: ...


@dataclass(frozen=True)
class Summary:
    total: int  # input records, good and bad
    written: int  # result records in the output
    errors: int  # records in the errors file
    resumed_from: int  # input records already done when this run started
    elapsed_s: float  # this run

    @property
    def rate(self) -> float:
        """Input records per second in this run."""
        return (self.total - self.resumed_from) / self.elapsed_s if self.elapsed_s > 0 else 0.0


def plan_chunks(items: Sequence[Item], start: int, max_records: int, max_bytes: int | None = None) -> list[Chunk]:
    """Good records from `start` on, in order, at most `max_records` (and about `max_bytes` of text) per chunk."""
    chunks: list[Chunk] = []
    current: list[Record] = []
    size = 0
    end = start
    for index in range(start, len(items)):
        item = items[index]
        if isinstance(item, BadRecord):
            continue
        cost = len(item.text.encode("utf-8"))
        if current and (len(current) >= max_records or (max_bytes is not None and size + cost > max_bytes)):
            chunks.append(Chunk(current, end))
            current, size = [], 0
        current.append(item)
        size += cost
        end = index + 1
    if current:
        chunks.append(Chunk(current, end))
    return chunks


def result_row(record: Record, answer: dict[str, Any]) -> dict[str, Any]:
    """One result line's values: the record's id and text (and gold label, in an evaluation), then its answer."""
    gold = {} if record.gold is None else {"gold": record.gold}
    return {"id": record.id, "text": record.text, **gold, **{k: v for k, v in answer.items() if k != "sequence"}}


def run_job(
    items: Sequence[Item],
    files: JobFiles,
    result_format: ResultFormat,
    runner: Runner,
    chunk_records: int,
    chunk_bytes: int | None = None,
) -> Summary:
    """Finish the job `files` holds (opened: fresh or resumed), committing after every chunk."""
    state = files.state
    assert state is not None, "open the job files first"
    start, cursor = state.next_item, state.next_item
    written, errors = state.written, state.errors
    started = time.monotonic()

    def drain(end: int, outcomes: list[Outcome]) -> None:
        """Write input records cursor..end (bad ones and the chunk's answers), then commit them."""
        nonlocal cursor, written, errors
        output, failed = bytearray(), bytearray()
        answers = iter(outcomes)
        for item in items[cursor:end]:
            reason = item.reason if isinstance(item, BadRecord) else None
            if isinstance(item, Record):
                outcome = next(answers)
                reason = outcome.error
                if reason is None:
                    output += result_format.row(result_row(item, outcome.answer or {}))
                    written += 1
            if reason is not None:
                failed += error_line(item.line, item.id, reason)
                errors += 1
        files.write(bytes(output), bytes(failed))
        files.commit(end, written, errors)
        bar.update(end - cursor)
        bar.set_postfix(errors=errors, refresh=False)
        cursor = end

    chunks = plan_chunks(items, start, chunk_records, chunk_bytes)
    try:
        with tqdm(
            total=len(items), initial=start, unit="rec", desc="records", mininterval=0.5, dynamic_ncols=True
        ) as bar:
            # strict: a runner that returned fewer chunks than asked must not look like a finished job.
            for chunk, outcomes in zip(chunks, runner.run(chunks), strict=True):
                if len(outcomes) != len(chunk.records):
                    raise RuntimeError(f"runner answered {len(outcomes)} records for a chunk of {len(chunk.records)}")
                drain(chunk.end, outcomes)
            if cursor < len(items):
                drain(len(items), [])  # bad records after the last good one
        files.finish()
    finally:
        files.close()
    return Summary(len(items), written, errors, start, time.monotonic() - started)
