"""One dataset job, start to finish: chunks of records to the model, each finished chunk saved, then the results.

A chunk is `chunk_records` good records in input order (with the bad records before them), planned
the same way on every run, so a resumed job redoes exactly the chunks that were not saved: no record
is lost or written twice, and the result file holds the bytes `mt5-bulk --url` writes for the same
file and arguments (the same result rows, bulk/records.py; each record's seed from the job's seed
and its line, bulk/task.py). Several chunks are in flight at once so the model replicas batch them.

The model is reached through ModelCalls (the JobRunner deployment's background calls), so the text
work is the routes' own (text/tasks.py) and the answers are the routes' answers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from serve_app.bulk.job import plan_chunks, result_row
from serve_app.bulk.records import BadRecord, Item, Record, ResultFormat, error_line
from serve_app.bulk.task import Outcome, TaskSpec
from serve_app.engine.errors import EngineInputError
from serve_app.ingress.schemas import AugmentResponse, ClassifyGenerateResponse, ClassifyScoreResponse
from serve_app.jobs import evaluation
from serve_app.jobs.dataset import Dataset, keep_known_gold, read_dataset
from serve_app.jobs.params import EvaluateJobParams, job_spec, parse_params
from serve_app.jobs.state import JobState, Status, now_iso
from serve_app.jobs.store import ChunkResult, JobStore
from serve_app.text.classification import Scoring
from serve_app.text.errors import TextInputError
from serve_app.text.model_calls import ModelCalls
from serve_app.text.tasks import TextTasks

logger = logging.getLogger("ray.serve")

CHUNK_ATTEMPTS = 8  # a chunk the model could not answer (replica lost, overload) is sent again, with backoff
MAX_BACKOFF_S = 15.0


@dataclass(frozen=True)
class JobLimits:
    chunk_records: int = 16  # records per chunk: mt5-bulk --url's default, so results batch alike
    chunks_in_flight: int = 4


@dataclass(frozen=True)
class Span:
    """Input items [start, end) of one chunk; `records` are its good ones."""

    start: int
    end: int
    records: list[Record]


def plan_spans(items: Sequence[Item], chunk_records: int) -> list[Span]:
    spans: list[Span] = []
    start = 0
    for chunk in plan_chunks(items, 0, chunk_records):
        spans.append(Span(start, chunk.end, chunk.records))
        start = chunk.end
    if start < len(items):  # bad records after the last good one
        spans.append(Span(start, len(items), []))
    return spans


def input_name(state: JobState) -> str:
    return "input" + state.filename[state.filename.rfind(".") :].lower()


def result_name(state: JobState) -> str:
    suffix = state.filename[state.filename.rfind(".") :].lower()
    return "result" + (".jsonl" if suffix == ".ndjson" else suffix)


class JobCancelled(Exception):
    pass


class JobRun:
    """Runs one job from its store entry: resumes from the saved chunks, saves each chunk, finishes the results."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        tasks: TextTasks,
        model: ModelCalls,
        default_scoring: Scoring,
        limits: JobLimits = JobLimits(),
        input_error: Callable[[BaseException], BaseException | None] | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.tasks = tasks
        self.model = model
        self.default_scoring = default_scoring
        self.limits = limits
        # Errors of one text (refused by the text or engine rules) fail that record only; the JobRunner says how to
        # find them inside Ray's wrapping.
        self.input_error = input_error or _plain_input_error
        self.cancelled = asyncio.Event()
        self._work: asyncio.Future[Any] | None = None

    def cancel(self) -> None:
        """Stop at once: the chunks in flight are abandoned (their rows leave the model's batch), the job is
        cancelled."""
        self.cancelled.set()
        if self._work is not None:
            self._work.cancel()

    async def _io(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(call, *args)

    async def run(self) -> JobState | None:
        state: JobState | None = await self._io(self.store.load, self.job_id)
        if state is None or state.finished:
            return state
        try:
            return await self._run(state)
        except JobCancelled:
            return await self._finish(state, "cancelled", detail="cancelled by the caller")
        except Exception as exc:  # noqa: BLE001 - a job's failure is its own status, never the runner's crash
            logger.exception("job %s failed", self.job_id)
            return await self._finish(state, "failed", detail=f"{type(exc).__name__}: {exc}")

    async def _finish(self, state: JobState, status: Status, detail: str | None = None) -> JobState:
        state.status = status
        state.detail = detail
        state.finished_at = now_iso()
        state.eta_s = None
        await self._io(self.store.save, state)
        return state

    async def _dataset(self, state: JobState) -> tuple[Dataset, TaskSpec]:
        data = await self._io(self.store.input_bytes, self.job_id, input_name(state))
        params = parse_params(state.task, json.dumps(state.params))
        label_field = params.label_field if isinstance(params, EvaluateJobParams) else None
        dataset = await self._io(read_dataset, data, state.filename, params.text_field, params.id_field, label_field)
        spec = job_spec(params, self.default_scoring, dataset.gold_labels)
        if spec.kind == "evaluate":
            dataset = keep_known_gold(dataset, spec.labels)
        return dataset, spec

    async def _run(self, state: JobState) -> JobState:
        if await self._io(self.store.cancel_requested, self.job_id):
            raise JobCancelled
        dataset, spec = await self._dataset(state)
        spans = plan_spans(dataset.items, self.limits.chunk_records)
        saved: dict[int, ChunkResult] = await self._io(self.store.chunks, self.job_id)
        if state.status == "running":  # it was running when the service or its runner stopped
            state.resumed += 1
            logger.info("job %s: resuming, %d of %d chunk(s) already saved", self.job_id, len(saved), len(spans))
        state.status = "running"
        state.started_at = state.started_at or now_iso()
        state.done = sum(span.end - span.start for index, span in enumerate(spans) if index in saved)
        state.errors = sum(chunk.errors for chunk in saved.values())
        await self._io(self.store.save, state)

        fmt = ResultFormat(dataset.fmt, spec.columns)
        todo = [index for index in range(len(spans)) if index not in saved]
        started, done_before = time.monotonic(), state.done
        window = asyncio.Semaphore(self.limits.chunks_in_flight)

        async def one(index: int) -> None:
            async with window:
                if self.cancelled.is_set():
                    raise JobCancelled
                chunk = await self._chunk(dataset.items, spans[index], spec, fmt)
                await self._io(self.store.save_chunk, self.job_id, index, chunk)
                saved[index] = chunk
                state.done += spans[index].end - spans[index].start
                state.errors += chunk.errors
                elapsed = time.monotonic() - started
                rate = (state.done - done_before) / elapsed if elapsed > 0 else None
                state.records_per_s = rate
                state.eta_s = (state.total - state.done) / rate if rate else None
                if await self._io(self.store.cancel_requested, self.job_id):
                    self.cancelled.set()
                    raise JobCancelled
                await self._io(self.store.save, state)

        if self.cancelled.is_set():
            raise JobCancelled
        workers = [asyncio.ensure_future(one(index)) for index in todo]
        self._work = asyncio.gather(*workers)
        try:
            await self._work
        except asyncio.CancelledError:
            if self.cancelled.is_set():
                raise JobCancelled from None
            raise  # the runner itself is stopping: the job stays `running` and is resumed by the next one
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

        ordered = [saved[index] for index in range(len(spans))]
        result = fmt.header() + "".join(chunk.output for chunk in ordered).encode("utf-8")
        errors = "".join(chunk.failed for chunk in ordered).encode("utf-8")
        if spec.kind == "evaluate":
            entries = [item for chunk in ordered for item in chunk.evaluations]
            state.report = evaluation.report(spec.labels, entries, spec.wordings)
        await self._io(self.store.save_results, self.job_id, result_name(state), result, errors)
        state.done = state.total
        finished = await self._finish(state, "succeeded")
        await self._io(self.store.drop_chunks, self.job_id)
        return finished

    # ------------------------------------------------------------ one chunk
    async def _chunk(self, items: Sequence[Item], span: Span, spec: TaskSpec, fmt: ResultFormat) -> ChunkResult:
        outcomes = await self._outcomes(span.records, spec) if span.records else []
        evaluations = await self._evaluations(span.records, outcomes, spec) if spec.kind == "evaluate" else []
        output, failed = [], []
        answers = iter(outcomes)
        for item in items[span.start : span.end]:
            reason = item.reason if isinstance(item, BadRecord) else None
            if isinstance(item, Record):
                outcome = next(answers)
                reason = outcome.error
                if reason is None:
                    output.append(fmt.row(result_row(item, outcome.answer or {})))
            if reason is not None:
                failed.append(error_line(item.line, item.id, reason))
        return ChunkResult(
            end=span.end,
            output=b"".join(output).decode("utf-8"),
            failed=b"".join(failed).decode("utf-8"),
            errors=len(failed),
            evaluations=evaluations,
        )

    async def _outcomes(self, records: list[Record], spec: TaskSpec) -> list[Outcome]:
        if spec.kind == "augment":
            return await self._each(records, lambda batch: self._augment(batch, spec))
        labels = list(spec.labels)
        mode = "score" if spec.kind == "evaluate" else spec.mode
        return await self._each(records, lambda batch: self._classify([r.text for r in batch], labels, mode, spec))

    async def _classify(self, texts: list[str], labels: list[str], mode: str, spec: TaskSpec) -> list[dict[str, Any]]:
        answers = await self.tasks.classify(self.model, texts, labels, mode, spec.scoring)  # type: ignore[arg-type]
        shape: type[BaseModel] = ClassifyScoreResponse if mode == "score" else ClassifyGenerateResponse
        return [shape.model_validate(answer).model_dump() for answer in answers]  # the route's JSON, field order too

    async def _augment(self, records: list[Record], spec: TaskSpec) -> list[dict[str, Any]]:
        params = spec.sampling if spec.sampling.seed is None else [spec.record_params(r.line) for r in records]
        answers = await self.tasks.augment(self.model, [r.text for r in records], params, spec.checks)
        return [AugmentResponse.model_validate(answer).model_dump(exclude_none=True) for answer in answers]

    async def _each(
        self, records: list[Record], answer: Callable[[list[Record]], Awaitable[list[dict[str, Any]]]]
    ) -> list[Outcome]:
        """The model's answers for `records` as one batch; a text the rules refuse fails only itself."""
        try:
            return [Outcome(answer=result) for result in await self._patiently(lambda: answer(records))]
        except Exception as exc:
            refusal = self.input_error(exc)
            if refusal is None:
                raise
            if len(records) == 1:
                return [Outcome(error=_reason(refusal))]
        return [outcome for record in records for outcome in await self._each([record], answer)]

    async def _patiently(self, call: Callable[[], Awaitable[list[dict[str, Any]]]]) -> list[dict[str, Any]]:
        """`call()`, again after a pause while the model is unavailable (a replica lost or replaced, overload)."""
        for attempt in range(1, CHUNK_ATTEMPTS + 1):
            try:
                return await call()
            except Exception as exc:
                if self.input_error(exc) is not None or attempt == CHUNK_ATTEMPTS:
                    raise
                pause = min(MAX_BACKOFF_S, 0.5 * 2**attempt)
                logger.warning("job %s: model call failed (%r); again in %.1f s", self.job_id, exc, pause)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _evaluations(
        self, records: list[Record], outcomes: list[Outcome], spec: TaskSpec
    ) -> list[dict[str, Any]]:
        """Per answered record: its evaluation entry, with the answer again in another batch and per wording."""
        answered = [(r, o.answer) for r, o in zip(records, outcomes, strict=True) if o.answer is not None]
        if not answered:
            return []
        texts = [record.text for record, _ in answered]
        labels = list(spec.labels)
        entries = [
            evaluation.entry(str(record.gold), answer["label"], answer["labels"], answer["scores"], record.text)
            for record, answer in answered
        ]
        # The texts again, in reverse order: each lands in a batch of other neighbours than the first time.
        again = await self._patiently(lambda: self._classify(texts[::-1], labels, "score", spec))
        for item, answer in zip(entries, again[::-1], strict=True):
            item["repeat"] = answer["label"]
            item["wordings"] = {}
        for label, alternatives in spec.wordings:
            for alternative in alternatives:
                worded = evaluation.worded_labels(labels, label, alternative)
                answers = await self._patiently(functools.partial(self._classify, texts, worded, "score", spec))
                for item, answer in zip(entries, answers, strict=True):
                    item["wordings"].setdefault(label, {})[alternative] = evaluation.as_label(
                        answer["label"], label, alternative
                    )
        return entries


def _plain_input_error(exc: BaseException) -> BaseException | None:
    return exc if isinstance(exc, (EngineInputError, TextInputError)) else None


def _reason(exc: BaseException) -> str:
    field, rule = getattr(exc, "field", None), getattr(exc, "rule", None)
    return f"{field}: {rule}" if field and rule else str(exc)
