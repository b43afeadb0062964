"""Input records in, result and error lines out: JSONL or CSV, chosen by the file's extension.

Every input record keeps the 1-based line where it starts, so errors can name it and
records without an id still get a stable one. A record that cannot be used becomes a
BadRecord with the reason instead of stopping the job.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from serve_app.ingress.schemas import MAX_TEXT_CHARS

Format = Literal["jsonl", "csv", "tsv"]
# Not .json: a JSON array file would read as one malformed record per line.
_EXTENSIONS: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_DELIMITERS = {"csv": ",", "tsv": "\t"}
_BOM = b"\xef\xbb\xbf"

# Cells hold whole documents; the stdlib's 128 KiB default would turn long texts into errors.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class InputError(ValueError):
    """The input as a whole is unusable (unknown format, no text column): the job cannot start."""


class MissingColumn(InputError):
    """The CSV header has no column `column`."""

    def __init__(self, message: str, column: str) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class Record:
    """A usable input record."""

    line: int
    id: Any  # the id field's value, or the line number when there is none
    text: str
    gold: str | None = None  # the label field's value, when the reader was asked for one (evaluation)


@dataclass(frozen=True)
class BadRecord:
    """An input record that goes to the errors file."""

    line: int
    id: Any
    reason: str


Item = Record | BadRecord


@dataclass(frozen=True)
class InputFile:
    items: list[Item]
    sha256: str  # of the raw bytes: a resumed run must read the same input


def file_format(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        known = ", ".join(sorted(_EXTENSIONS))
        raise InputError(f"{path}: unknown extension {suffix or '(none)'!r}; use one of {known}")
    return _EXTENSIONS[suffix]


def read_input(
    path: str | Path, text_field: str = "text", id_field: str = "id", label_field: str | None = None
) -> InputFile:
    """All records of a JSONL or CSV/TSV file, in file order, good and bad."""
    return parse_input(Path(path).read_bytes(), file_format(path), text_field, id_field, label_field)


def parse_input(
    data: bytes, fmt: Format, text_field: str = "text", id_field: str = "id", label_field: str | None = None
) -> InputFile:
    """The records of a file's bytes; `label_field`: each record's gold label is read too (a record without one
    is a BadRecord)."""
    digest = hashlib.sha256(data).hexdigest()
    if data.startswith(_BOM):  # spreadsheets write one; it is not part of the first field name
        data = data[len(_BOM) :]
    if fmt == "jsonl":
        items = list(parse_jsonl(data, text_field, id_field, label_field))
    else:
        items = list(parse_csv(data, text_field, id_field, _DELIMITERS[fmt], label_field))
    return InputFile(items, digest)


def check_text(value: Any, text_field: str) -> str | None:
    """Why `value` cannot be a text to process, or None when it can (the HTTP service's rules)."""
    if not isinstance(value, str):
        return f"field {text_field!r} must be a string, got {_json_type(value)}"
    if not value.strip():
        return f"field {text_field!r} is empty"
    if len(value) > MAX_TEXT_CHARS:
        return f"field {text_field!r} has {len(value)} characters; at most {MAX_TEXT_CHARS} are allowed"
    return None


def check_gold(value: Any, label_field: str) -> str | None:
    """Why `value` cannot be a gold label, or None when it can."""
    if not isinstance(value, str):
        return f"field {label_field!r} must be a string, got {_json_type(value)}"
    if not value.strip():
        return f"field {label_field!r} is empty"
    return None


def parse_jsonl(data: bytes, text_field: str, id_field: str, label_field: str | None = None) -> Iterator[Item]:
    # Split on \n only: JSON strings cannot hold raw newlines, and str.splitlines would also split on U+2028.
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue  # blank lines (a trailing newline, spacing) are not records
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield BadRecord(number, number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield BadRecord(number, number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield BadRecord(number, number, f"expected a JSON object, got {_json_type(obj)}")
            continue
        record_id = obj.get(id_field)
        record_id = number if record_id is None else record_id
        if text_field not in obj:
            yield BadRecord(number, record_id, f"missing field {text_field!r}")
            continue
        problem = check_text(obj[text_field], text_field)
        gold = None
        if problem is None and label_field is not None:
            gold = obj.get(label_field)
            problem = f"missing field {label_field!r}" if label_field not in obj else check_gold(gold, label_field)
        if problem:
            yield BadRecord(number, record_id, problem)
        else:
            yield Record(number, record_id, obj[text_field], gold.strip() if isinstance(gold, str) else None)


def parse_csv(
    data: bytes, text_field: str, id_field: str, delimiter: str = ",", label_field: str | None = None
) -> Iterator[Item]:
    """Rows of a CSV with a header row; quoted cells may span lines, so records carry their first line."""
    bad_utf8: set[int] = set()

    def lines() -> Iterator[str]:
        # Decode line by line so one bad byte costs one record, not the file.
        for number, raw in enumerate(data.splitlines(keepends=True), start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                bad_utf8.add(number)
                yield raw.decode("utf-8", errors="replace")

    reader = csv.reader(lines(), delimiter=delimiter)
    header: list[str] | None = None
    while True:
        first_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if header is None:
                raise InputError(f"cannot read the CSV header: {exc}") from exc
            yield BadRecord(first_line, first_line, f"CSV error: {exc}")
            continue
        if not row:
            continue  # blank line
        if header is None:
            header = [name.strip() for name in row]
            if text_field not in header:
                raise MissingColumn(
                    f"the header has no column {text_field!r} (columns: {', '.join(header)}); pick one with "
                    "--text-field",
                    text_field,
                )
            if label_field is not None and label_field not in header:
                columns = ", ".join(header)
                raise MissingColumn(f"the header has no column {label_field!r} (columns: {columns})", label_field)
            text_at = header.index(text_field)
            id_at = header.index(id_field) if id_field in header else None
            label_at = header.index(label_field) if label_field is not None else None
            continue
        record_id: Any = first_line
        if id_at is not None and id_at < len(row) and row[id_at].strip():
            record_id = row[id_at]
        if any(number in bad_utf8 for number in range(first_line, reader.line_num + 1)):
            yield BadRecord(first_line, record_id, "not valid UTF-8")
        elif text_at >= len(row):
            yield BadRecord(
                first_line,
                record_id,
                f"row has {len(row)} fields, the header {len(header)}: no value for column {text_field!r}",
            )
        else:
            problem = check_text(row[text_at], text_field)
            gold = None
            if problem is None and label_at is not None:
                gold = row[label_at] if label_at < len(row) else None
                problem = f"no value for column {label_field!r}" if gold is None else check_gold(gold, str(label_field))
            if problem:
                yield BadRecord(first_line, record_id, problem)
            else:
                yield Record(first_line, record_id, row[text_at], gold.strip() if gold is not None else None)


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


class ResultFormat:
    """Encodes result rows for the output file: a JSON object per line, or CSV with JSON-encoded list cells."""

    def __init__(self, fmt: Format, columns: Sequence[str]) -> None:
        self.fmt = fmt
        self.columns = list(columns)

    def header(self) -> bytes:
        return b"" if self.fmt == "jsonl" else self._csv_line(self.columns)

    def row(self, values: dict[str, Any]) -> bytes:
        if self.fmt == "jsonl":
            return json_line({column: values.get(column) for column in self.columns})
        return self._csv_line([_cell(values.get(column)) for column in self.columns])

    def _csv_line(self, cells: list[str]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=_DELIMITERS[self.fmt], lineterminator="\n").writerow(cells)
        return buffer.getvalue().encode("utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def json_line(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")


def error_line(line: int, record_id: Any, reason: str) -> bytes:
    """One line of the errors file (always JSONL, whatever the input's format)."""
    return json_line({"line": line, "id": record_id, "error": reason})


def gold_labels(items: Sequence[Item]) -> list[str]:
    """The distinct gold labels of the usable records, in first-seen order."""
    return list(dict.fromkeys(item.gold for item in items if isinstance(item, Record) and item.gold is not None))


def only_known_gold(items: Sequence[Item], labels: Sequence[str]) -> list[Item]:
    """Records whose gold label is not a candidate become BadRecords (an evaluation goes on without them)."""
    known = set(labels)
    return [
        BadRecord(item.line, item.id, f"gold label {item.gold!r} is not one of the candidate labels")
        if isinstance(item, Record) and item.gold is not None and item.gold not in known
        else item
        for item in items
    ]
