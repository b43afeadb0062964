"""Continuous batching: one loop owns the engine and decides, per decoding step, who runs.

Each iteration (`run_iteration`, called by one thread only):

1. drops the rows of callers that gave up;
2. admits waiting work in arrival order within the budget: decoder rows for
   generation (`max_batch_rows`) and prompt tokens for scoring and prefill
   together (`max_prefill_tokens`), at least one request per iteration;
   interactive work first, then background work (dataset jobs, bulk runs) in
   what is left of a smaller budget (`background_share`), so a job keeps the
   model busy without making an interactive request wait long behind it;
3. scores the admitted scoring requests as one batch and answers them;
4. prefills the admitted generation requests and merges their rows into the
   running batch;
5. runs one decoding step for every live row; a request is answered the moment
   its last row finishes.

Submissions and cancellations come from other threads (`submit_*`, `cancel`);
answers leave through each submission's callback, on the loop's thread. A
generation request that could not start before the deadline at the measured
drain rate is refused at submission (AdmissionRefused), not left to time out.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serve_app.engine import GenerationRequest, ScoringRequest, Seq2SeqEngine
from serve_app.engine.errors import is_out_of_memory
from serve_app.scheduling.config import SchedulerConfig
from serve_app.scheduling.errors import AdmissionRefused, OutOfMemoryRefused

if TYPE_CHECKING:
    from serve_app.engine.decode_batch import DecodeBatch

logger = logging.getLogger(__name__)

# on_done(result, None) or on_done(None, error); called once, on the scheduler's thread.
Callback = Callable[[Any, "BaseException | None"], None]

# While interactive work arrived this recently, background work gets a small slice of each iteration:
# an iteration cannot be interrupted, so its length is what an interactive arrival may wait behind it.
INTERACTIVE_RECENT_S = 5.0
BACKGROUND_SLICE = 16  # background prompt tokens per iteration then: max_prefill_tokens / this (at least one request)
# A lane whose background work waits for another lane's interactive request (Lanes sets defer_background) waits at
# most this long at a time, so a job under steady interactive load still moves; it polls this often meanwhile.
BACKGROUND_MAX_DEFER_S = 1.0
DEFERRED_POLL_S = 0.02


@dataclass
class WorkTimes:
    """When one request's stages happened, on the scheduler's clock (time.monotonic unless a test gives another),
    written by the scheduler thread and read by the caller after the answer (tracing's spans)."""

    enqueued: float = 0.0
    started: float = 0.0  # admitted: its wait in the queue ends
    prefilled: float = 0.0  # generation: its prompt encoded and its rows in the batch
    finished: float = 0.0  # answered


@dataclass(frozen=True)
class WorkTag:
    """What a caller attaches to a request for its own records: the HTTP request's id, which every log line about
    the request names, and where the scheduler writes the times of its stages (None: nobody traces it)."""

    request_id: str = ""
    times: WorkTimes | None = None


UNTAGGED = WorkTag()


@dataclass
class _Work:
    ticket: int
    kind: str  # "generate" | "score"
    request: GenerationRequest | ScoringRequest
    on_done: Callback
    enqueued: float
    background: bool = False
    tag: WorkTag = UNTAGGED

    @property
    def request_id(self) -> str:
        return self.tag.request_id

    @property
    def tokens(self) -> int:
        return len(self.request.input_ids)

    @property
    def rows(self) -> int:
        return self.request.params.num_return_sequences if isinstance(self.request, GenerationRequest) else 0

    @property
    def generation(self) -> GenerationRequest:
        assert isinstance(self.request, GenerationRequest), self.kind
        return self.request

    @property
    def scoring(self) -> ScoringRequest:
        assert isinstance(self.request, ScoringRequest), self.kind
        return self.request


@dataclass
class _Decoding:
    """A generation request whose rows are in the running batch."""

    work: _Work
    sequences: list[list[int] | None]
    remaining: int


@dataclass
class IterationReport:
    """What one iteration did, for metrics and logs."""

    started: float
    seconds: float = 0.0
    live_rows: int = 0  # rows in this iteration's decoding step
    step_seconds: float = 0.0
    prefill_tokens: int = 0  # prompt tokens encoded (scoring and generation)
    prefill_seconds: float = 0.0
    scored: int = 0
    score_seconds: float = 0.0
    admitted: int = 0  # generation requests whose rows joined the batch
    finished: int = 0  # requests answered (generation and scoring)
    cancelled_rows: int = 0  # rows of running requests whose callers gave up
    cancelled_waiting: int = 0  # queued requests whose callers gave up before they started
    cancelled_ids: list[str] = field(default_factory=list)  # their request ids, waiting and running
    queue_waits: list[tuple[str, float]] = field(default_factory=list)  # (kind, seconds) of work started now
    waiting: int = 0  # requests still queued after admission (interactive and background)


def _stamp(work: _Work, stage: str, when: float) -> None:
    if work.tag.times is not None:
        setattr(work.tag.times, stage, when)


def _ids(request_ids: list[str]) -> str:
    """The request ids a log line is about, as its message ends with them."""
    return f" [request {', '.join(request_ids)}]" if request_ids else ""


def _log_id(request_ids: list[str]) -> dict[str, str]:
    """A log record's `request_id` (what Serve's JSON logs carry as a field) for a line about one request; the
    scheduler thread has no Serve request context of its own to take it from."""
    return {"request_id": request_ids[0]} if len(request_ids) == 1 else {}


class DrainRate:
    """Decoder rows freed per second of work, smoothed over about `horizon_s` seconds."""

    def __init__(self, horizon_s: float = 10.0) -> None:
        self.horizon_s = horizon_s
        self.rows_per_s: float | None = None

    def record(self, rows_freed: int, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = rows_freed / seconds
        if self.rows_per_s is None:  # unknown until the first row finishes
            self.rows_per_s = rate if rows_freed else None
            return
        weight = 1.0 - math.exp(-seconds / self.horizon_s)
        self.rows_per_s += weight * (rate - self.rows_per_s)


class Scheduler:
    def __init__(
        self,
        engine: Seq2SeqEngine,
        config: SchedulerConfig | None = None,
        deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        row_limit: int | None = None,
        config_follows: bool = False,
    ) -> None:
        """`row_limit`: the most rows this lane's memory holds (engine/memory.py), which every `max_batch_rows` is
        capped to; the batch's buffers grow by doubling up to it (None: no cap known, the first config's rows).

        `config_follows`: the budgets come by `reconfigure` just after (a ModelReplica's user_config): a batch of
        fixed buffers (decode_graphs) is then made for them, not for `config` first and again for them; without a
        reconfigure, the first request makes it."""
        self.engine = engine
        self.config = config or SchedulerConfig()
        self.row_limit = row_limit
        self.deadline_s = deadline_s  # a generation request expected to wait longer to start is refused
        self.clock = clock
        self.drain = DrainRate()
        self._lock = threading.Condition()
        self._waiting: deque[_Work] = deque()  # interactive work, in arrival order
        self._waiting_rows = 0  # rows of interactive generation waiting (the admission deadline counts these)
        self._background: deque[_Work] = deque()  # background work, in arrival order
        self._background_rows = 0  # rows of background generation in the running batch
        self._last_interactive = -math.inf  # when interactive work last arrived
        self._cancelled: set[int] = set()
        self._next_ticket = 0
        self._awaiting_config = config_follows and engine.fixed_batches
        self._batch = self.engine.new_batch(capacity=0) if self._awaiting_config else self._new_batch()
        self._decoding: dict[int, _Decoding] = {}
        self._open: set[int] = set()  # tickets not yet answered nor cancelled (queued, scoring, prefilling or decoding)
        self._open_interactive: set[int] = set()  # the interactive ones among them
        # True while an interactive request elsewhere should have the cores (another lane's): background work here
        # then waits, for at most BACKGROUND_MAX_DEFER_S at a time. None: never (one lane, or the tests').
        self.defer_background: Callable[[], bool] | None = None
        self._deferred_since: float | None = None

    def _batch_rows(self) -> int:
        rows = self.config.max_batch_rows
        return rows if self.row_limit is None else min(rows, self.row_limit)

    def _new_batch(self) -> DecodeBatch:
        # Sized for the budget now and bounded by the lane's memory: a later, larger max_batch_rows (reconfigure) grows
        # it by doubling, not by one merge's rows at a time (each growth copies every cached key and value).
        rows = self._batch_rows()
        return self.engine.new_batch(capacity=rows, row_limit=self.row_limit or rows)

    def _renew_batch(self) -> None:
        """Replace the running batch, its buffers let go first: with decode_graphs they are the lane's whole cache, and
        two would not fit. Should the new one fail (out of memory), the lane keeps an empty batch of no rows, which
        a fixed batch's next iteration tries to make anew and any other grows on demand."""
        self._batch = self.engine.new_batch(capacity=0)
        self._batch = self._new_batch()

    def _refit_due(self) -> bool:
        """An empty batch whose buffers never grow (decode_graphs) is made anew when max_batch_rows has changed."""
        return (
            self.engine.fixed_batches
            and not self._awaiting_config
            and not self._batch.rows
            and self._batch.capacity != self._batch_rows()
        )

    @property
    def batch_ready(self) -> bool:
        """The running batch is made for the budgets now (a fixed batch is made anew only between iterations)."""
        return not self._awaiting_config and not self._refit_due()

    def _free_rows(self) -> int:
        """Rows the running batch may take now: max_batch_rows less those decoding; none while a batch of fixed
        buffers too small for a raised max_batch_rows drains, to be made anew at the new size once empty."""
        if self.engine.fixed_batches and self._batch.rows and self._batch.capacity < self._batch_rows():
            return 0
        return self.config.max_batch_rows - self._batch.rows

    # ------------------------------------------------------ any thread
    def reconfigure(self, config: SchedulerConfig) -> None:
        with self._lock:
            self.config = config
            self._awaiting_config = False
            self._lock.notify_all()  # an idle loop makes a fixed batch anew at once (_refit_due)

    def submit_generation(
        self,
        request: GenerationRequest,
        on_done: Callback,
        background: bool = False,
        tag: WorkTag = UNTAGGED,
    ) -> int:
        """Queue a generation request; its answer is `num_return_sequences` id lists, in order.

        `background`: after every interactive request, never refused for the deadline (a job waits its turn).
        `tag`: its request id, named in every log line about it, and the times of its stages, filled in."""
        with self._lock:
            if not background:
                self._refuse_if_too_late(request.params.num_return_sequences)
            return self._enqueue("generate", request, on_done, background, tag)

    def submit_scoring(
        self,
        request: ScoringRequest,
        on_done: Callback,
        background: bool = False,
        tag: WorkTag = UNTAGGED,
    ) -> int:
        """Queue a scoring request; its answer is a ScoringResult."""
        with self._lock:
            return self._enqueue("score", request, on_done, background, tag)

    def cancel(self, ticket: int) -> None:
        """The caller gave up: free its rows at the next iteration; it gets no answer."""
        with self._lock:
            self._cancelled.add(ticket)
            self._lock.notify()

    def has_work(self) -> bool:
        """Something to do now; background work that is deferred is not (its loop leaves its cores to the others)."""
        background = bool(self._background) and not self._background_deferred()
        return bool(self._waiting or background or self._batch.rows or self._cancelled or self._refit_due())

    def wait_for_work(self, timeout_s: float) -> bool:
        with self._lock:
            if self._background:  # deferred: look again soon, the other lane's request may be answered by then
                timeout_s = min(timeout_s, DEFERRED_POLL_S)
            return self._lock.wait_for(self.has_work, timeout=timeout_s)

    def _background_deferred(self) -> bool:
        if self.defer_background is None or not self.defer_background():
            self._deferred_since = None
            return False
        now = self.clock()
        if self._deferred_since is None:
            self._deferred_since = now
        return now - self._deferred_since < BACKGROUND_MAX_DEFER_S

    @property
    def interactive_outstanding(self) -> int:
        """Interactive requests submitted here and not yet answered or cancelled."""
        return len(self._open_interactive)

    def expected_wait_s(self, rows: int) -> float:
        """How long `rows` more rows would wait to start, at the measured drain rate (0 while rows are free)."""
        ahead = self._waiting_rows + rows - self._free_rows()
        rate = self.drain.rows_per_s
        if ahead <= 0 or rate is None:  # room now, or nothing has finished yet to measure by
            return 0.0
        return ahead / rate if rate > 0 else math.inf

    @property
    def outstanding(self) -> int:
        """Requests submitted here and not yet answered or cancelled: the work ahead of a new one."""
        return len(self._open)

    @property
    def live_rows(self) -> int:
        return self._batch.rows

    @property
    def waiting_requests(self) -> int:
        return len(self._waiting) + len(self._background)

    # ------------------------------------------------- scheduler thread
    def run_iteration(self) -> IterationReport:
        report = IterationReport(started=self.clock())
        self._drop_cancelled(self._take_cancellations(report), report)
        if self._refit_due():
            self._renew_batch()
        admitted = self._admit(report)
        scoring = [work for work in admitted if work.kind == "score"]
        generation = [work for work in admitted if work.kind == "generate"]
        if scoring:
            self._score(scoring, report)
        if generation:
            self._prefill(generation, report)
        if self._batch.rows:
            self._step(report)
        report.seconds = self.clock() - report.started
        return report

    def _take_cancellations(self, report: IterationReport) -> set[int]:
        """Cancelled tickets; those still waiting leave the queue here, running ones in _drop_cancelled."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            self._open -= cancelled
            self._open_interactive -= cancelled
            if cancelled:
                report.cancelled_ids = [
                    work.request_id
                    for work in (*self._waiting, *self._background)
                    if work.ticket in cancelled and work.request_id
                ]
                before = len(self._waiting) + len(self._background)
                self._waiting = deque(work for work in self._waiting if work.ticket not in cancelled)
                self._background = deque(work for work in self._background if work.ticket not in cancelled)
                self._waiting_rows = sum(work.rows for work in self._waiting)
                report.cancelled_waiting = before - len(self._waiting) - len(self._background)
        return cancelled

    def _admit(self, report: IterationReport) -> list[_Work]:
        """Take the work that fits this iteration's budget: interactive first, then background, each in arrival
        order."""
        with self._lock:
            budget_rows = self._free_rows()
            budget_tokens = self.config.max_prefill_tokens
            admitted: list[_Work] = []
            while self._waiting:
                work = self._waiting[0]
                if admitted and work.tokens > budget_tokens:
                    break
                if work.kind == "generate" and work.rows > budget_rows:
                    # Head-of-line: later requests do not overtake it. One larger than a whole batch runs alone.
                    if not (work.rows > self.config.max_batch_rows and self._batch.rows == 0 and not admitted):
                        break
                self._waiting.popleft()
                admitted.append(work)
                _stamp(work, "started", report.started)
                budget_tokens -= work.tokens
                budget_rows -= work.rows
                self._waiting_rows -= work.rows
                report.queue_waits.append((work.kind, report.started - work.enqueued))
            if not self._waiting:
                admitted += self._admit_background(report, admitted, budget_tokens)
            report.waiting = len(self._waiting) + len(self._background)
        return admitted

    def _admit_background(self, report: IterationReport, admitted: list[_Work], budget_tokens: int) -> list[_Work]:
        """Background work for what this iteration has left: while interactive work is about, a slice of the
        prompt budget and at most `background_share` of the rows (the rest stay free for interactive arrivals)."""
        if self._background and self._background_deferred():
            return []
        if report.started - self._last_interactive < INTERACTIVE_RECENT_S:
            budget_tokens = min(budget_tokens, max(1, self.config.max_prefill_tokens // BACKGROUND_SLICE))
        row_cap = max(1, int(self.config.max_batch_rows * self.config.background_share))
        budget_rows = min(self._free_rows(), row_cap - self._background_rows)
        taken: list[_Work] = []
        while self._background:
            work = self._background[0]
            if (admitted or taken) and work.tokens > budget_tokens:
                break
            if work.kind == "generate" and work.rows > budget_rows:
                # A request larger than the background's share runs when nothing else of the background does.
                if not (self._background_rows == 0 and not taken and work.rows <= self._free_rows()):
                    break
            self._background.popleft()
            taken.append(work)
            _stamp(work, "started", report.started)
            budget_tokens -= work.tokens
            budget_rows -= work.rows
            self._background_rows += work.rows
            report.queue_waits.append((work.kind, report.started - work.enqueued))
        if taken:
            self._deferred_since = None  # a slice went through: the next deferral starts afresh
        return taken

    def _drop_cancelled(self, cancelled: set[int], report: IterationReport) -> None:
        gone = cancelled & self._decoding.keys()
        if gone:
            rows = self._batch.rows_of(gone)
            self._batch.drop(rows)
            for ticket in gone:
                decoding = self._decoding.pop(ticket)
                self._release_background_rows(decoding)
                if decoding.work.request_id:
                    report.cancelled_ids.append(decoding.work.request_id)
            report.cancelled_rows = len(rows)
        if gone or report.cancelled_waiting:
            logger.info(
                "scheduler: %d request(s) cancelled by their callers (%d running, %d row(s) freed; %d still waiting)%s",
                len(gone) + report.cancelled_waiting,
                len(gone),
                report.cancelled_rows,
                report.cancelled_waiting,
                _ids(report.cancelled_ids),
                extra=_log_id(report.cancelled_ids),
            )

    def _score(self, scoring: list[_Work], report: IterationReport) -> None:
        started = self.clock()
        try:
            results = self.engine.score([work.scoring for work in scoring])
        except Exception as error:  # noqa: BLE001 - every caller must get an answer
            ids = [work.request_id for work in scoring if work.request_id]
            if is_out_of_memory(error):
                logger.warning(
                    "scheduler: out of memory scoring %d request(s); refused with 503%s",
                    len(scoring),
                    _ids(ids),
                    extra=_log_id(ids),
                )
                error = OutOfMemoryRefused(sum(len(work.scoring.label_ids) for work in scoring))
            else:
                logger.exception("scheduler: scoring batch failed%s", _ids(ids), extra=_log_id(ids))
            for work in scoring:
                self._answer(work, None, error)
            return
        for work, result in zip(scoring, results, strict=True):
            self._answer(work, result, None)
        report.scored = len(scoring)
        report.finished += len(scoring)
        report.prefill_tokens += sum(work.tokens for work in scoring)
        report.score_seconds = self.clock() - started

    def _prefill(self, generation: list[_Work], report: IterationReport) -> None:
        started = self.clock()
        try:
            fresh = self.engine.prefill(
                [work.generation for work in generation], keys=[work.ticket for work in generation]
            )
        except Exception as error:  # noqa: BLE001
            ids = [work.request_id for work in generation if work.request_id]
            if is_out_of_memory(error):  # the newcomers are refused; the running batch goes on
                logger.warning(
                    "scheduler: out of memory encoding %d new request(s); refused with 503%s",
                    len(generation),
                    _ids(ids),
                    extra=_log_id(ids),
                )
                error = OutOfMemoryRefused(sum(work.rows for work in generation))
            else:
                logger.exception("scheduler: prefill failed%s", _ids(ids), extra=_log_id(ids))
            for work in generation:
                self._background_rows -= work.rows if work.background else 0
                self._answer(work, None, error)
            return
        self._batch.merge(fresh)
        prefilled = self.clock()
        for work in generation:
            _stamp(work, "prefilled", prefilled)
            rows = work.rows
            self._decoding[work.ticket] = _Decoding(work, [None] * rows, rows)
        report.admitted = len(generation)
        report.prefill_tokens += sum(work.tokens for work in generation)
        report.prefill_seconds = self.clock() - started

    def _step(self, report: IterationReport) -> None:
        report.live_rows = self._batch.rows
        started = self.clock()
        try:
            finished = self.engine.step(self._batch)
        except Exception as error:  # noqa: BLE001 - fail the batch, keep serving
            if is_out_of_memory(error) and self._decoding:
                self._refuse_newest_for_memory()
                return
            ids = [decoding.work.request_id for decoding in self._decoding.values() if decoding.work.request_id]
            logger.exception(
                "scheduler: decoding step failed; failing the %d request(s) in the batch%s",
                len(self._decoding),
                _ids(ids),
                extra=_log_id(ids),
            )
            for decoding in self._decoding.values():
                self._answer(decoding.work, None, error)
            self._decoding.clear()
            self._background_rows = 0
            self._renew_batch()
            return
        report.step_seconds = self.clock() - started
        for row in finished:
            ticket = row.owner.key
            assert isinstance(ticket, int)  # _prefill keys rows by ticket
            decoding = self._decoding[ticket]
            decoding.sequences[row.owner.sequence] = row.token_ids
            decoding.remaining -= 1
            if decoding.remaining == 0:
                self._release_background_rows(self._decoding.pop(ticket))
                self._answer(decoding.work, decoding.sequences, None)
                report.finished += 1
        self.drain.record(len(finished), self.clock() - report.started)

    def _refuse_newest_for_memory(self) -> None:
        """Out of memory mid-step: the newest request leaves with a 503, the others decode on at the next step.

        A step writes every row's new cache column before anything can fail halfway for one row, and
        a retried step rewrites the same column, so the rows that stay decode exactly as before."""
        newest = max(self._decoding)  # tickets grow with arrival
        decoding = self._decoding.pop(newest)
        self._release_background_rows(decoding)
        rows = self._batch.rows_of({newest})
        self._batch.drop(rows)
        ids = [decoding.work.request_id] if decoding.work.request_id else []
        logger.warning(
            "scheduler: out of memory in a decoding step; refused the newest request (%d row(s)), %d go on%s",
            len(rows),
            len(self._decoding),
            _ids(ids),
            extra=_log_id(ids),
        )
        self._answer(decoding.work, None, OutOfMemoryRefused(len(rows)))

    # ------------------------------------------------------------ helpers
    def _enqueue(
        self,
        kind: str,
        request: GenerationRequest | ScoringRequest,
        on_done: Callback,
        background: bool,
        tag: WorkTag = UNTAGGED,
    ) -> int:
        self._awaiting_config = False  # work came before any budgets: the batch is made for these
        ticket = self._next_ticket
        self._next_ticket += 1
        work = _Work(ticket, kind, request, on_done, self.clock(), background, tag)
        _stamp(work, "enqueued", work.enqueued)
        self._open.add(ticket)
        if not background:
            self._open_interactive.add(ticket)
        if background:
            self._background.append(work)
        else:
            self._waiting.append(work)
            self._waiting_rows += work.rows
            self._last_interactive = work.enqueued
        self._lock.notify()
        return ticket

    def _release_background_rows(self, decoding: _Decoding) -> None:
        if decoding.work.background:
            self._background_rows -= decoding.work.rows

    def _refuse_if_too_late(self, rows: int) -> None:
        if self.deadline_s is None:
            return
        wait = self.expected_wait_s(rows)
        if wait > self.deadline_s:
            # Raised on the caller's thread, inside its Serve request context: Serve's one-line "Request refused"
            # record (deployments/replica_logging.py) names the request id already.
            raise AdmissionRefused(wait, self.deadline_s)

    def _answer(self, work: _Work, result: Any, error: BaseException | None) -> None:
        _stamp(work, "finished", self.clock())
        self._open.discard(work.ticket)
        self._open_interactive.discard(work.ticket)
        try:
            work.on_done(result, error)
        except Exception:  # noqa: BLE001 - a caller's callback must not stop the loop
            logger.exception("scheduler: answer callback failed")
