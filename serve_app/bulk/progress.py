"""Resume state: output files that only ever hold whole, committed chunks, plus a sidecar progress file.

After each chunk the output and errors files are flushed and fsynced, then the sidecar
(`<output>.progress.json`) is replaced atomically with how far the input is done and
how long each file is at that point. Whatever happens after (Ctrl+C, kill -9, a power
cut), a rerun with the same arguments truncates the files back to those lengths and
carries on from the next record, so nothing is lost or written twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

VERSION = 1


class ResumeError(RuntimeError):
    """Existing output that this run may not continue or replace without --overwrite."""


@dataclass(frozen=True)
class Progress:
    fingerprint: str
    settings: dict[str, Any]  # what the fingerprint covers, to say what changed
    next_item: int  # input records (good and bad) fully written
    output_bytes: int
    errors_bytes: int
    written: int  # result records in the output
    errors: int  # lines in the errors file
    version: int = VERSION


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".progress.json")


def load(path: Path) -> Progress | None:
    if not path.exists():
        return None
    try:
        return Progress(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise ResumeError(
            f"{path} is not a progress file this version can read ({exc}); pass --overwrite to start over"
        ) from exc


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


class JobFiles:
    """The output and errors files of one job and its progress file, committed together."""

    def __init__(self, output: Path, errors: Path, settings: dict[str, Any], header: bytes = b"") -> None:
        self.output_path = output
        self.errors_path = errors
        self.progress_path = progress_path(output)
        self.settings = settings
        self.fingerprint = fingerprint(settings)
        self.header = header
        self.output: BinaryIO | None = None
        self.errors: BinaryIO | None = None
        self.state: Progress | None = None

    def open(self, overwrite: bool = False) -> Progress:
        """Start fresh or pick up where a previous run stopped; returns the state to continue from."""
        state = None if overwrite else load(self.progress_path)
        if state is not None and state.fingerprint != self.fingerprint:
            changed = ", ".join(changed_settings(state.settings, self.settings)) or "unknown"
            raise ResumeError(
                f"{self.output_path} is a partial output of a job with other settings (changed: {changed}). "
                "Rerun with the original arguments to finish it, or pass --overwrite to start over."
            )
        if state is None and not overwrite:
            existing = [str(path) for path in (self.output_path, self.errors_path) if path.exists()]
            if existing:
                raise ResumeError(
                    f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}, with no unfinished "
                    "job "
                    f"recorded for {'it' if len(existing) == 1 else 'them'} (no {self.progress_path.name}); pass "
                    "--overwrite to replace."
                )
        if state is None:
            for path, content in ((self.output_path, self.header), (self.errors_path, b"")):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            self.output = _open_at(self.output_path, len(self.header))
            self.errors = _open_at(self.errors_path, 0)
            return self.commit(0, 0, 0)
        self.output = _open_at(self.output_path, state.output_bytes)
        self.errors = _open_at(self.errors_path, state.errors_bytes)
        self.state = state
        return state

    def write(self, output: bytes = b"", errors: bytes = b"") -> None:
        assert self.output is not None and self.errors is not None
        if output:
            self.output.write(output)
        if errors:
            self.errors.write(errors)

    def commit(self, next_item: int, written: int, errors: int) -> Progress:
        """Make everything written so far durable, then record it; a crash before the rename keeps the old state."""
        assert self.output is not None and self.errors is not None
        for handle in (self.output, self.errors):
            handle.flush()
            os.fsync(handle.fileno())
        self.state = Progress(
            self.fingerprint, self.settings, next_item, self.output.tell(), self.errors.tell(), written, errors
        )
        self._save(self.state)
        return self.state

    def finish(self) -> None:
        """All input done: drop the progress file, and the errors file when nothing went wrong."""
        self.close()
        self.progress_path.unlink(missing_ok=True)
        if self.errors_path.exists() and self.errors_path.stat().st_size == 0:
            self.errors_path.unlink()
        _fsync_dir(self.output_path.parent)

    def close(self) -> None:
        for handle in (self.output, self.errors):
            if handle is not None and not handle.closed:
                handle.close()

    def _save(self, state: Progress) -> None:
        temporary = self.progress_path.with_name(self.progress_path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(asdict(state), handle, ensure_ascii=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.progress_path)
        _fsync_dir(self.progress_path.parent)


def _open_at(path: Path, length: int) -> BinaryIO:
    """Open for appending after cutting off anything past `length` (the tail of an interrupted chunk)."""
    if not path.exists():
        raise ResumeError(
            f"{path} is missing but the progress file says it holds {length} bytes; pass --overwrite to start over"
        )
    if path.stat().st_size < length:
        raise ResumeError(
            f"{path} is shorter than the progress file says ({path.stat().st_size} < {length} bytes); pass --overwrite "
            "to start over"
        )
    handle = path.open("r+b")
    handle.truncate(length)
    handle.seek(length)
    return handle


def _fsync_dir(directory: Path) -> None:
    # The rename/unlink itself must reach the disk, or a crash could bring back the old progress file.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
