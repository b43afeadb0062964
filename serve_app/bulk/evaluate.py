"""`mt5-bulk evaluate`: zero-shot classification of a labelled file, scored against its gold labels.

Pass 1 classifies every record into OUTPUT (classify's columns and `gold`); pass 2 classifies the same
records again in other batches (chunks one record shorter), for repeatability; one more pass per other
wording of a label, that wording in the label's place. Each pass is an ordinary bulk run, resumable on
its own (pass 2 and the wordings write beside OUTPUT: `OUTPUT.repeat.jsonl`, `OUTPUT.wording-N.jsonl`).
The report is the dataset jobs' own (serve_app/jobs/evaluation.py): OUTPUT.report.json, and a summary.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.bulk.records import Format, file_format
from serve_app.bulk.task import TaskSpec
from serve_app.jobs import evaluation


@dataclass(frozen=True)
class Pass:
    name: str  # "answers", "repeat", or "wording <label> -> <alternative>"
    spec: TaskSpec
    output: Path
    errors: Path
    chunk_shift: int  # records fewer per chunk than the first pass: other batches
    wording: tuple[str, str] | None = None  # (label, alternative) of a wording pass


def plan_passes(spec: TaskSpec, output: Path, errors: Path) -> list[Pass]:
    beside = output.with_name
    passes = [
        Pass("answers", spec, output, errors, 0),
        Pass(
            "repeat",
            spec,
            beside(output.name + ".repeat.jsonl"),
            beside(output.name + ".repeat.errors.jsonl"),
            1,
        ),
    ]
    number = 0
    for label, alternatives in spec.wordings:
        for alternative in alternatives:
            number += 1
            labels = tuple(evaluation.worded_labels(spec.labels, label, alternative))
            worded = dataclasses.replace(spec, labels=labels, wordings=())
            passes.append(
                Pass(
                    f"wording {label} -> {alternative}",
                    worded,
                    beside(f"{output.name}.wording-{number}.jsonl"),
                    beside(f"{output.name}.wording-{number}.errors.jsonl"),
                    0,
                    (label, alternative),
                )
            )
    return passes


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A result file's rows, JSONL or CSV/TSV (whose list cells are JSON)."""
    fmt: Format = file_format(path)
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = list(csv.DictReader(text.splitlines(keepends=True), delimiter="," if fmt == "csv" else "\t"))
    for row in rows:
        for column in ("labels", "scores"):
            row[column] = json.loads(row[column])
    return rows


def report(passes: list[Pass]) -> dict[str, Any]:
    """The evaluation report from the passes' result files (rows in input order, the same records in each)."""
    first, repeat, *worded = passes
    answers = read_rows(first.output)
    again = read_rows(repeat.output)
    read = {each.output: read_rows(each.output) for each in worded}
    for path, rows in [(repeat.output, again), *read.items()]:
        if len(rows) != len(answers):
            raise RuntimeError(f"{path}: {len(rows)} answers for {len(answers)} records; run it again")
    by_wording = [(each.wording, read[each.output]) for each in worded if each.wording is not None]
    entries = []
    for index, row in enumerate(answers):
        item = evaluation.entry(row["gold"], row["label"], row["labels"], row["scores"], row["text"])
        item["repeat"] = again[index]["label"]
        item["wordings"] = {}
        for (label, alternative), rows in by_wording:
            item["wordings"].setdefault(label, {})[alternative] = evaluation.as_label(
                rows[index]["label"], label, alternative
            )
        entries.append(item)
    return evaluation.report(first.spec.labels, entries, first.spec.wordings)


def summary(result: dict[str, Any]) -> str:
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    lines = [
        f"{result['records']} record(s), labels {', '.join(result['labels'])}",
        f"accuracy {share(result['accuracy'])}, macro-F1 {share(result['macro_f1'])}, "
        f"short texts (<= {result['short_texts']['max_chars']} chars, {result['short_texts']['records']}) "
        f"{share(result['short_texts']['accuracy'])}, repeatability {share(result['repeatability'])}, "
        f"misplaced {share(result['misplaced'])}",
    ]
    for label, scores in result["per_label"].items():
        lines.append(
            f"  {label}: precision {share(scores['precision'])}, recall {share(scores['recall'])}, "
            f"F1 {share(scores['f1'])}, support {scores['support']}"
        )
    for label, tried in result["wordings"].items():
        lines.append(f"  best wording for {label}: {tried['best']} (F1 {share(tried['f1'][tried['best']])})")
    return "\n".join(lines)


def run_passes(passes: list[Pass], run_pass: Callable[[Pass], None], output: Path) -> dict[str, Any]:
    """Every pass (each resumes on its own), then the report, written beside OUTPUT."""
    for each in passes:
        run_pass(each)
    result = report(passes)
    output.with_name(output.name + ".report.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return result
