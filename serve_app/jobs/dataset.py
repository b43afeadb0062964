"""An uploaded file as a job's records, or the one reason it cannot be a dataset (refused before any model work).

The records are read by the same code as `mt5-bulk` (bulk/records.py): a malformed line becomes an
error record of the job, not a refusal. What refuses the whole file: an unknown format, bytes that
are not UTF-8, no usable record, a CSV header without the asked column, more records than allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from serve_app.bulk.records import (
    BadRecord,
    Format,
    InputError,
    InputFile,
    Item,
    MissingColumn,
    Record,
    file_format,
    gold_labels,
    only_known_gold,
    parse_input,
)


class DatasetError(ValueError):
    """The file cannot be a dataset: `field` is the form field (or params field) to blame, `rule` why."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class Dataset:
    fmt: Format
    input: InputFile
    gold_labels: list[str]  # evaluate: the distinct gold labels, in first-seen order

    @property
    def items(self) -> list[Item]:
        return self.input.items


def dataset_format(filename: str) -> Format:
    try:
        return file_format(filename)
    except InputError:
        raise DatasetError("file", f"{filename!r}: use a .csv, .tsv, .jsonl or .ndjson file") from None


def read_dataset(
    data: bytes,
    filename: str,
    text_field: str,
    id_field: str,
    label_field: str | None = None,
    max_records: int | None = None,
) -> Dataset:
    """The records of an uploaded file (`label_field`: an evaluation's gold labels too), or DatasetError."""
    fmt = dataset_format(filename)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetError("file", f"not UTF-8 text: line {line} (byte {exc.start}): {exc.reason}") from None
    try:
        source = parse_input(data, fmt, text_field, id_field, label_field)
    except MissingColumn as exc:
        field = "params.text_field" if exc.column == text_field else "params.label_field"
        raise DatasetError(field, f"the header has no column {exc.column!r}") from None
    except InputError as exc:
        raise DatasetError("file", str(exc)) from None
    good = [item for item in source.items if isinstance(item, Record)]
    if not good:
        first = next((item for item in source.items if isinstance(item, BadRecord)), None)
        why = f"; line {first.line}: {first.reason}" if first is not None else " (the file is empty)"
        raise DatasetError("file", f"no usable record{why}")
    if max_records is not None and len(source.items) > max_records:
        raise DatasetError("file", f"{len(source.items)} records; at most {max_records} per job")
    return Dataset(fmt, source, gold_labels(source.items))


def keep_known_gold(dataset: Dataset, labels: tuple[str, ...]) -> Dataset:
    """An evaluation's records whose gold label is not a candidate become error records (the job goes on)."""
    return replace(dataset, input=replace(dataset.input, items=only_known_gold(dataset.items, labels)))
