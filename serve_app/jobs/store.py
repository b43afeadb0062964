"""Where jobs live: each job's input, state, finished chunks and results, in a local directory or an object store.

The store is named by config.yaml's `jobs.store`: a path, or any URI fsspec knows (`s3://bucket/prefix`
with s3fs installed, its credentials and endpoint from the usual AWS variables, e.g. AWS_ENDPOINT_URL_S3
for an S3-compatible server; every replica of every node must reach the same store). Layout per job:

    <store>/<id>/state.json          JobState, replaced whole
    <store>/<id>/input.<ext>         the uploaded bytes
    <store>/<id>/chunks/<n>.json     one finished chunk: its result lines, error lines, evaluation entries
    <store>/<id>/result.<ext>        the results, once the job has succeeded (chunks joined in input order)
    <store>/<id>/errors.jsonl        the error lines, likewise
    <store>/<id>/cancel              present once someone asked to cancel

Every object is written whole (a local file through a rename, an object in one put), so a reader
never sees half of one: a chunk is either there or redone, which is what resume relies on.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from serve_app.jobs.state import JobState


@dataclass(frozen=True)
class ChunkResult:
    """One finished chunk: the bytes it adds to the result and errors files, and what evaluation needs."""

    end: int  # input position just past this chunk's last record
    output: str
    failed: str
    errors: int
    evaluations: list[dict[str, Any]] = field(default_factory=list)


class JobStore:
    def __init__(self, uri: str) -> None:
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
        self.uri = uri
        self.fs, self.root = fsspec.core.url_to_fs(uri)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.fs.makedirs(self.root, exist_ok=True)

    # ------------------------------------------------------------ paths
    def _path(self, job_id: str, *parts: str) -> str:
        if not job_id.isalnum():  # ids are uuid4 hex: nothing else may name a path in the store
            raise KeyError(job_id)
        return "/".join([self.root.rstrip("/"), job_id, *parts])

    def _put(self, path: str, data: bytes) -> None:
        if self.local:  # write beside, fsync, rename: a crash leaves the old object or the new one
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        else:
            self.fs.pipe_file(path, data)

    def _get(self, path: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------ jobs
    def create(self, state: JobState, input_name: str, data: bytes) -> None:
        self._put(self._path(state.id, input_name), data)
        self.save(state)

    def save(self, state: JobState) -> None:
        self._put(self._path(state.id, "state.json"), state.model_dump_json().encode("utf-8"))

    def load(self, job_id: str) -> JobState | None:
        try:
            raw = self._get(self._path(job_id, "state.json"))
        except KeyError:
            return None
        return None if raw is None else JobState.model_validate_json(raw)

    def _fresh(self, path: str) -> None:
        """Forget cached listings (s3fs keeps them): another replica or node may have written since."""
        self.fs.invalidate_cache(path)

    def job_ids(self) -> list[str]:
        self._fresh(self.root)
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        return [
            name.rstrip("/").rsplit("/", 1)[-1] for name in entries if name.rstrip("/").rsplit("/", 1)[-1].isalnum()
        ]

    def states(self, owner: str | None = None) -> list[JobState]:
        """Every job's state (of `owner` when given), newest first."""
        found = [state for job_id in self.job_ids() if (state := self.load(job_id)) is not None]
        mine = [state for state in found if owner is None or state.owner == owner]
        return sorted(mine, key=lambda state: state.created_unix, reverse=True)

    def input_bytes(self, job_id: str, input_name: str) -> bytes:
        data = self._get(self._path(job_id, input_name))
        if data is None:
            raise FileNotFoundError(f"job {job_id}: its input is gone")
        return data

    def delete(self, job_id: str) -> None:
        path = self._path(job_id)
        self._fresh(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # ------------------------------------------------------------ cancellation
    def request_cancel(self, job_id: str) -> None:
        self._put(self._path(job_id, "cancel"), b"")

    def cancel_requested(self, job_id: str) -> bool:
        path = self._path(job_id, "cancel")
        self._fresh(path)
        return bool(self.fs.exists(path))

    # ------------------------------------------------------------ chunks and results
    def save_chunk(self, job_id: str, index: int, chunk: ChunkResult) -> None:
        self._put(self._path(job_id, "chunks", f"{index:06d}.json"), json.dumps(asdict(chunk)).encode("utf-8"))

    def chunks(self, job_id: str) -> dict[int, ChunkResult]:
        """The finished chunks, by index."""
        folder = self._path(job_id, "chunks")
        self._fresh(folder)
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return {}
        found: dict[int, ChunkResult] = {}
        for name in names:
            stem = name.rsplit("/", 1)[-1].removesuffix(".json")
            if stem.isdigit() and (raw := self._get(name)) is not None:
                found[int(stem)] = ChunkResult(**json.loads(raw))
        return found

    def drop_chunks(self, job_id: str) -> None:
        folder = self._path(job_id, "chunks")
        self._fresh(folder)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)

    def save_results(self, job_id: str, result_name: str, result: bytes, errors: bytes) -> None:
        self._put(self._path(job_id, result_name), result)
        self._put(self._path(job_id, "errors.jsonl"), errors)

    def result(self, job_id: str, result_name: str) -> bytes | None:
        return self._get(self._path(job_id, result_name))

    def errors(self, job_id: str) -> bytes | None:
        return self._get(self._path(job_id, "errors.jsonl"))
