"""Continuous batching: the engine's decoding state and the scheduler, driven directly.

Arrival orders are controlled by submitting between `run_iteration()` calls (no
sleeps standing in for synchronisation); the clock is a counter the tests move.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading

import pytest
import torch

from serve_app.engine import GenerationRequest, SamplingParams, ScoringRequest
from serve_app.engine.decode_batch import DecodeBatch, self_columns_bound
from serve_app.scheduling.config import SchedulerConfig
from serve_app.scheduling.errors import AdmissionRefused, OutOfMemoryRefused
from serve_app.scheduling.loop import SchedulerLoop
from serve_app.scheduling.scheduler import BACKGROUND_MAX_DEFER_S, BACKGROUND_SLICE, Scheduler

pytestmark = pytest.mark.unit

PROMPTS = [
    "这家餐厅的服务态度很好,上菜速度也快",
    "物流太慢了",
    "新能源汽车的续航里程越来越长,充电桩也越来越多",
    "学校开学后",
    "股市今天大幅上涨,银行板块领涨",
]
LABELS = ["天气", "美食", "旅游", "新能源汽车", "物流延迟"]


def gen(tok, index: int, **params) -> GenerationRequest:
    defaults = {
        "num_return_sequences": 2,
        "max_new_tokens": 6 + 5 * (index % 4),
        "temperature": 0.9,
        "top_k": 20 + index,
        "top_p": 0.9,
        "seed": 100 + index,
    }
    return GenerationRequest(
        tok(PROMPTS[index % len(PROMPTS)] * (1 + index % 3)).input_ids, SamplingParams(**{**defaults, **params})
    )


def score(tok, index: int) -> ScoringRequest:
    labels = [tok(label).input_ids[:-1] for label in LABELS[: 2 + index % 4]]
    return ScoringRequest(
        tok(f"文本分类。\n候选标签：天气,美食。\n文本内容：{PROMPTS[index % len(PROMPTS)]}").input_ids, labels
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.01  # every reading is 10 ms later: a deterministic drain rate
        return self.now


class Answers:
    """Collects callbacks; `answered[key]` is the result, `errors[key]` the failure."""

    def __init__(self) -> None:
        self.answered: dict[object, object] = {}
        self.errors: dict[object, BaseException] = {}
        self.order: list[object] = []

    def callback(self, key: object):
        def done(result, error) -> None:
            assert key not in self.answered and key not in self.errors, "answered twice"
            self.order.append(key)
            if error is not None:
                self.errors[key] = error
            else:
                self.answered[key] = result

        return done


def drain(scheduler: Scheduler, limit: int = 10_000) -> list:
    reports = []
    while scheduler.has_work():
        reports.append(scheduler.run_iteration())
        assert len(reports) < limit
    return reports


# ------------------------------------------------------------------ the decoding state
def test_rows_joining_and_leaving_mid_flight_decode_exactly_as_alone(engine, tok):
    requests = [gen(tok, i) for i in range(6)] + [gen(tok, 6, temperature=0.0), gen(tok, 7, top_k=0, top_p=0.5)]
    alone = [engine.generate([request])[0] for request in requests]
    batch = engine.new_batch(capacity=2)  # tiny: merges must grow it
    results: dict[tuple[int, int], list[int]] = {}
    pending = list(enumerate(requests))
    rng = random.Random(5)
    while pending or batch.rows:
        if pending and rng.random() < 0.5:
            joining = [pending.pop(0) for _ in range(min(len(pending), rng.randint(1, 3)))]
            batch.merge(engine.prefill([r for _, r in joining], keys=[k for k, _ in joining]))
        for row in engine.step(batch):
            results[(row.owner.key, row.owner.sequence)] = row.token_ids
    for key, expected in enumerate(alone):
        assert [results[(key, sequence)] for sequence in range(len(expected))] == expected


def test_merging_two_running_batches_aligns_their_time_axes(engine, tok):
    first, second = gen(tok, 0, max_new_tokens=20), gen(tok, 1, max_new_tokens=20)
    expected = engine.generate([first])[0], engine.generate([second])[0]
    a, b = engine.prefill([first], keys=["a"]), engine.prefill([second], keys=["b"])
    results: dict[tuple[str, int], list[int]] = {}

    def collect(finished) -> None:
        for row in finished:
            results[(row.owner.key, row.owner.sequence)] = row.token_ids

    for _ in range(2):
        collect(engine.step(a))
    for _ in range(5):  # b has decoded longer than a: a's columns shift right when b joins
        collect(engine.step(b))
    rows = a.rows + b.rows
    a.merge(b)
    assert b.rows == 0 and a.rows == rows
    while a.rows:
        collect(engine.step(a))
    assert [results[("a", 0)], results[("a", 1)]] == expected[0]
    assert [results[("b", 0)], results[("b", 1)]] == expected[1]


def test_dropping_rows_moves_only_the_rows_that_fill_holes(engine, tok):
    batch = engine.prefill(
        [gen(tok, i, num_return_sequences=1, max_new_tokens=50) for i in range(6)], keys=list("abcdef")
    )
    engine.decoder.step(batch)  # one column of keys and values for every row, no sampling: no row finishes
    before = {owner.key: batch.self_kv[:, :, row, :, : batch.length].clone() for row, owner in enumerate(batch.owners)}
    batch.drop([1, 4])
    assert [owner.key for owner in batch.owners] == ["a", "f", "c", "d"]  # f fills b's hole; e's hole is past the end
    for row, owner in enumerate(batch.owners):
        assert torch.equal(batch.self_kv[:, :, row, :, : batch.length], before[owner.key])


def test_time_axis_is_compacted_when_early_columns_are_dead(engine, tok):
    batch = engine.new_batch()
    batch.merge(engine.prefill([gen(tok, 0, num_return_sequences=1, max_new_tokens=70)], keys=["long"]))
    for _ in range(40):
        engine.step(batch)
    batch.merge(engine.prefill([gen(tok, 1, num_return_sequences=1, max_new_tokens=200)], keys=["late"]))
    widths = set()
    finished = {}
    while batch.rows:
        for row in engine.step(batch):
            finished[row.owner.key] = row.token_ids
        widths.add(batch.self_kv.shape[4])
    assert batch.length == 0 and max(widths) <= 256  # compacted, not grown to the 240 steps the two spanned
    assert finished["late"] == engine.generate([gen(tok, 1, num_return_sequences=1, max_new_tokens=200)])[0][0]


def test_time_axis_stays_within_twice_the_longest_row_under_a_stream_of_late_joiners(engine, tok):
    # A CUDA graph replays fixed buffers: the self-attention axis must have a bound whatever the arrival pattern.
    # A live row spans fewer than max_new_tokens columns, and the axis doubles only when over half of it is live,
    # so it stays within twice the smallest INITIAL_COLUMNS * 2^k holding max_new_tokens.
    max_new_tokens = 100
    batch, widths, finished = engine.new_batch(), set(), 0
    for step in range(600):
        if step % 7 == 0 and step < 500:
            request = gen(tok, step, num_return_sequences=1, max_new_tokens=max_new_tokens)
            batch.merge(engine.prefill([request], keys=[step]))
        finished += len(engine.step(batch))
        widths.add(batch.self_kv.shape[4])
    assert finished >= 60 and max(widths) <= 2 * 128 == self_columns_bound(max_new_tokens)


def test_a_wide_buffer_is_not_walked_whole_the_time_axis_follows_the_rows(engine, tok):
    """A buffer wider than the rows need (preallocated for graphs at self_columns_bound(512), or grown by an earlier
    long request) keeps its place, and the time axis is compacted at each power of two as it would be in a buffer
    of its own size: a step attends over (at most twice) the columns its rows use, never the whole buffer."""
    max_new_tokens = 100
    width = self_columns_bound(512)
    batch = DecodeBatch(engine.decoder.shape, capacity=16, self_columns=width, encoder_columns=64)
    address = batch.self_kv.data_ptr()
    lengths, finished = set(), {}
    requests = {
        step: gen(tok, step, num_return_sequences=1, max_new_tokens=max_new_tokens) for step in range(0, 500, 7)
    }
    for step in range(600):
        if step in requests:
            batch.merge(engine.prefill([requests[step]], keys=[step]))
        for row in engine.step(batch):
            finished[row.owner.key] = row.token_ids
        lengths.add(batch.length)
    assert len(finished) == len(requests) and batch.self_kv.shape[4] == width and batch.self_kv.data_ptr() == address
    assert max(lengths) <= 2 * 128 < width  # the same bound as in a buffer that grew from INITIAL_COLUMNS
    for step in (0, 245, 497):
        assert finished[step] == engine.generate([requests[step]])[0][0]  # rows decode as alone through compactions


def test_an_empty_batch_steps_to_nothing(engine):
    batch = engine.new_batch()
    assert engine.step(batch) == [] and isinstance(batch, DecodeBatch) and batch.rows == 0


# ------------------------------------------------------------------ the scheduler
def test_seeded_answers_are_the_same_whatever_the_arrival_order(engine, tok):
    requests = [gen(tok, i) for i in range(8)]
    alone = [engine.generate([request])[0] for request in requests]
    for order_seed in range(3):
        rng = random.Random(order_seed)
        scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=6, max_prefill_tokens=60), clock=Clock())
        answers = Answers()
        pending = list(range(len(requests)))
        rng.shuffle(pending)
        while pending or scheduler.has_work():
            for _ in range(rng.randint(0, 2)):
                if pending:
                    key = pending.pop()
                    scheduler.submit_generation(requests[key], answers.callback(key))
            if scheduler.has_work():
                report = scheduler.run_iteration()
                assert report.live_rows <= 6  # the row budget holds at every step
        assert answers.answered == dict(enumerate(alone)) and not answers.errors


def test_scores_between_decoding_steps_equal_scores_alone(engine, tok):
    scoring = [score(tok, i) for i in range(6)]
    alone = [engine.score([request])[0] for request in scoring]
    scheduler = Scheduler(engine, SchedulerConfig(), clock=Clock())
    answers = Answers()
    for i in range(4):
        scheduler.submit_generation(gen(tok, i, max_new_tokens=30), answers.callback(f"g{i}"))
    scheduler.run_iteration()
    for i, request in enumerate(scoring):
        scheduler.submit_scoring(request, answers.callback(i))
        scheduler.run_iteration()
        assert i in answers.answered, "a scoring request waits at most one iteration"
        assert scheduler.live_rows > 0, "scored between decoding steps, with generation rows running"
    drain(scheduler)
    for i, expected in enumerate(alone):
        got = answers.answered[i]
        assert got.log_scores == pytest.approx(expected.log_scores, abs=1e-5)
        assert got.probabilities == pytest.approx(expected.probabilities, abs=1e-5)


def test_a_request_answers_when_its_own_rows_finish(engine, tok):
    scheduler = Scheduler(engine, SchedulerConfig(), clock=Clock())
    answers = Answers()
    scheduler.submit_generation(
        gen(tok, 0, max_new_tokens=40, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=1),
        answers.callback("long"),
    )
    scheduler.run_iteration()
    scheduler.run_iteration()
    scheduler.submit_generation(gen(tok, 1, max_new_tokens=3, num_return_sequences=1), answers.callback("short"))
    iterations = 0
    while "short" not in answers.answered:
        scheduler.run_iteration()
        iterations += 1
    assert iterations <= 3 and "long" not in answers.answered  # it did not wait for the long row
    drain(scheduler)
    assert answers.order == ["short", "long"]


def test_prefill_budget_spreads_a_burst_over_iterations(engine, tok):
    requests = [gen(tok, 0, num_return_sequences=1, max_new_tokens=4, seed=i) for i in range(10)]  # equal lengths
    budget = 2 * len(requests[0].input_ids)
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=64, max_prefill_tokens=budget), clock=Clock())
    answers = Answers()
    for key, request in enumerate(requests):
        scheduler.submit_generation(request, answers.callback(key))
    reports = drain(scheduler)
    assert all(report.prefill_tokens <= budget for report in reports)
    assert [report.admitted for report in reports if report.admitted] == [2, 2, 2, 2, 2]
    assert len(answers.answered) == 10
    # one request longer than the whole budget is still admitted, alone
    scheduler.submit_generation(gen(tok, 2, max_new_tokens=2), answers.callback("big"))
    scheduler.reconfigure(SchedulerConfig(max_prefill_tokens=1))
    assert scheduler.run_iteration().admitted == 1


def test_request_larger_than_the_row_budget_runs_alone(engine, tok):
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=4), clock=Clock())
    answers = Answers()
    scheduler.submit_generation(gen(tok, 0, num_return_sequences=2, max_new_tokens=10), answers.callback("small"))
    scheduler.run_iteration()
    scheduler.submit_generation(gen(tok, 1, num_return_sequences=10, max_new_tokens=3), answers.callback("wide"))
    rows = [report.live_rows for report in drain(scheduler)]
    assert len(answers.answered["wide"]) == 10 and len(answers.answered["small"]) == 2
    assert 10 in rows and 12 not in rows  # it waited for the batch to empty, then ran alone


def test_reconfigure_changes_the_row_budget_at_the_next_iteration(engine, tok):
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=2), clock=Clock())
    answers = Answers()
    for key in range(4):
        scheduler.submit_generation(gen(tok, key, max_new_tokens=12), answers.callback(key))
    assert scheduler.run_iteration().live_rows == 2
    scheduler.reconfigure(SchedulerConfig(max_batch_rows=8))
    assert scheduler.run_iteration().live_rows == 8
    drain(scheduler)
    assert len(answers.answered) == 4


def test_a_larger_row_budget_grows_the_batch_by_doubling_up_to_the_lanes_memory(engine, tok, monkeypatch):
    """max_batch_rows raised by reconfigure (the GPU profile raises 64 to 256): requests joining one at a time grow
    the running batch's buffers by doubling up to the lane's memory row limit, not by one merge's rows each time
    (every growth copies every cached key and value)."""
    batches = []
    new_batch = engine.new_batch
    monkeypatch.setattr(engine, "new_batch", lambda **sizes: batches.append(new_batch(**sizes)) or batches[-1])
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=2), clock=Clock(), row_limit=12)
    scheduler.reconfigure(SchedulerConfig(max_batch_rows=12))
    answers = Answers()
    capacities = []
    for key in range(12):
        scheduler.submit_generation(gen(tok, key, num_return_sequences=1, max_new_tokens=40), answers.callback(key))
        scheduler.run_iteration()
        capacities.append(batches[0].capacity)
    drain(scheduler)
    assert len(batches) == 1 and len(answers.answered) == 12
    assert sorted(set(capacities)) == [2, 4, 8, 12], capacities  # doubled, clamped to the limit


def test_cancelled_requests_free_their_rows_at_the_next_step_and_get_no_answer(engine, tok):
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=4), clock=Clock())
    answers = Answers()
    gone = scheduler.submit_generation(
        gen(tok, 0, max_new_tokens=100, num_return_sequences=2), answers.callback("gone")
    )
    scheduler.submit_generation(gen(tok, 1, max_new_tokens=100, num_return_sequences=2), answers.callback("stays"))
    queued = scheduler.submit_generation(gen(tok, 2, max_new_tokens=5), answers.callback("queued-and-gone"))
    scheduler.submit_generation(gen(tok, 3, max_new_tokens=5), answers.callback("next"))
    assert scheduler.run_iteration().live_rows == 4
    scheduler.cancel(gone)
    scheduler.cancel(queued)
    report = scheduler.run_iteration()
    assert report.cancelled_rows == 2 and report.cancelled_waiting == 1
    assert report.live_rows == 4  # "next" took the freed rows at once
    drain(scheduler)
    assert set(answers.answered) == {"stays", "next"} and not answers.errors


def test_interactive_work_is_admitted_before_background_work_queued_earlier(engine, tok):
    slice_tokens = 2 * len(score(tok, 0).input_ids)  # a slice of the budget holds about two requests
    scheduler = Scheduler(engine, SchedulerConfig(max_prefill_tokens=BACKGROUND_SLICE * slice_tokens), clock=Clock())
    answers = Answers()
    for key in range(3):
        scheduler.submit_scoring(score(tok, key), answers.callback(f"job{key}"), background=True)
    scheduler.submit_scoring(score(tok, 3), answers.callback("user"))
    first = scheduler.run_iteration()
    # the interactive request runs first; background work gets a slice of the prompt budget beside it
    assert answers.order[0] == "user"
    assert 2 <= first.scored < 4 and scheduler.waiting_requests == 4 - first.scored
    drain(scheduler)
    assert set(answers.answered) == {"job0", "job1", "job2", "user"}
    alone = Scheduler(engine, SchedulerConfig(), clock=Clock())
    reference = Answers()
    alone.submit_scoring(score(tok, 1), reference.callback("alone"))
    drain(alone)
    assert answers.answered["job1"] == reference.answered["alone"]  # the same answer whatever its priority


def test_background_generation_leaves_rows_for_interactive_arrivals(engine, tok):
    config = SchedulerConfig(max_batch_rows=8, background_share=0.5)
    scheduler = Scheduler(engine, config, clock=Clock())
    answers = Answers()
    for key in range(6):
        scheduler.submit_generation(
            gen(tok, key, max_new_tokens=40, num_return_sequences=2), answers.callback(key), background=True
        )
    assert scheduler.run_iteration().live_rows == 4  # half of the rows: two background requests
    scheduler.submit_generation(gen(tok, 9, max_new_tokens=3, num_return_sequences=4), answers.callback("user"))
    assert scheduler.run_iteration().live_rows == 8  # the interactive request starts at once in the free rows
    drain(scheduler)
    assert len(answers.answered) == 7 and not answers.errors
    assert answers.order.index("user") < answers.order.index(5)


def test_background_work_is_never_refused_for_the_deadline(engine, tok):
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=2), deadline_s=0.05, clock=Clock())
    answers = Answers()
    scheduler.submit_generation(gen(tok, 0, max_new_tokens=2, num_return_sequences=2), answers.callback("warm"))
    drain(scheduler)
    for key in range(20):  # far more than drain within the deadline: queued, not refused
        scheduler.submit_generation(
            gen(tok, key, max_new_tokens=2, num_return_sequences=2), answers.callback(key), background=True
        )
    # interactive work is judged by the interactive queue alone, which is empty: it is accepted and goes first
    scheduler.submit_generation(gen(tok, 1, max_new_tokens=2, num_return_sequences=2), answers.callback("user"))
    drain(scheduler)
    assert len(answers.answered) == 22 and answers.order[1] == "user"


def test_requests_that_cannot_start_before_the_deadline_are_refused_at_once(engine, tok):
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=2), deadline_s=0.5, clock=Clock())
    answers = Answers()
    scheduler.submit_generation(gen(tok, 0, max_new_tokens=2, num_return_sequences=2), answers.callback("warm"))
    drain(scheduler)  # measures the drain rate: 2 rows in a few 10 ms ticks
    rate = scheduler.drain.rows_per_s
    assert rate and rate > 0
    accepted = 0
    with pytest.raises(AdmissionRefused) as refused:
        for key in itertools.count():
            scheduler.submit_generation(gen(tok, key, max_new_tokens=2, num_return_sequences=2), answers.callback(key))
            accepted += 1
    assert refused.value.expected_wait_s > 0.5 and refused.value.retry_after_s >= 1
    assert accepted == pytest.approx(int(0.5 * rate / 2) + 1, abs=1)  # as many as drain within the deadline
    drain(scheduler)
    assert len(answers.answered) == accepted + 1


def test_an_engine_failure_fails_its_requests_and_the_loop_serves_on(engine, tok, monkeypatch):
    scheduler = Scheduler(engine, SchedulerConfig(), clock=Clock())
    answers = Answers()
    scheduler.submit_generation(gen(tok, 0), answers.callback("doomed"))
    scheduler.submit_scoring(score(tok, 0), answers.callback("scored"))
    with monkeypatch.context() as patch:
        patch.setattr(engine, "step", lambda batch: (_ for _ in ()).throw(RuntimeError("device lost")))
        scheduler.run_iteration()
    assert isinstance(answers.errors["doomed"], RuntimeError) and "scored" in answers.answered
    scheduler.submit_generation(gen(tok, 1), answers.callback("after"))
    drain(scheduler)
    assert answers.answered["after"] == engine.generate([gen(tok, 1)])[0]


def fail_once_with_out_of_memory(module: torch.nn.Module, on_call: int, patch: pytest.MonkeyPatch) -> list[int]:
    """`module`'s forward raises torch.OutOfMemoryError on its `on_call`-th call (1-based), as an allocation would."""
    calls = [0]
    forward = module.forward

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == on_call:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.91 GiB (injected)")
        return forward(*args, **kwargs)

    patch.setattr(module, "forward", failing)
    return calls


def test_out_of_memory_in_a_step_refuses_the_newest_request_and_the_rest_decode_as_alone(engine, tok, monkeypatch):
    older, newer = gen(tok, 0, max_new_tokens=12), gen(tok, 1, max_new_tokens=12)
    expected = engine.generate([older])[0]
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=8), clock=Clock())
    answers = Answers()
    scheduler.submit_generation(older, answers.callback("older"))
    scheduler.run_iteration()  # the older request is decoding
    scheduler.submit_generation(newer, answers.callback("newer"))
    calls = fail_once_with_out_of_memory(
        engine.model.lm_head, on_call=2, patch=monkeypatch
    )  # the step after the newer one joined
    scheduler.run_iteration()
    scheduler.run_iteration()
    assert calls[0] >= 2
    refused = answers.errors["newer"]
    assert isinstance(refused, OutOfMemoryRefused) and refused.rows == 2 and refused.retry_after_s >= 1
    assert "newer" not in answers.answered and "older" not in answers.errors
    drain(scheduler)
    assert answers.answered["older"] == expected  # the failed step was retried on the same cache column
    assert scheduler._batch.rows == 0


def test_out_of_memory_encoding_newcomers_refuses_only_them(engine, tok, monkeypatch):
    older, newer = gen(tok, 2, max_new_tokens=10), gen(tok, 3)
    expected = engine.generate([older])[0]
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=8), clock=Clock())
    answers = Answers()
    scheduler.submit_generation(older, answers.callback("older"))
    scheduler.run_iteration()
    scheduler.submit_generation(newer, answers.callback("newer"))
    fail_once_with_out_of_memory(engine.model.encoder, on_call=1, patch=monkeypatch)
    drain(scheduler)
    assert isinstance(answers.errors["newer"], OutOfMemoryRefused)
    assert answers.answered["older"] == expected
    scheduler.submit_generation(newer, answers.callback("again"))  # memory is back: the retry is served
    drain(scheduler)
    assert answers.answered["again"] == engine.generate([newer])[0]


def test_out_of_memory_scoring_refuses_the_scoring_requests_with_a_retry(engine, tok, monkeypatch):
    scheduler = Scheduler(engine, SchedulerConfig(), clock=Clock())
    answers = Answers()
    scheduler.submit_scoring(score(tok, 0), answers.callback("scored"))
    fail_once_with_out_of_memory(engine.model.encoder, on_call=1, patch=monkeypatch)
    drain(scheduler)
    assert isinstance(answers.errors["scored"], OutOfMemoryRefused) and answers.errors["scored"].retry_after_s >= 1


# ------------------------------------------------------------------ the loop thread
def test_loop_answers_concurrent_callers_and_frees_rows_of_cancelled_ones(engine, tok):
    requests = [gen(tok, i) for i in range(6)]
    expected = [engine.generate([request])[0] for request in requests]
    expected_score = engine.score([score(tok, 1)])[0]
    scheduler = Scheduler(engine, SchedulerConfig(max_batch_rows=8))
    loop = SchedulerLoop(scheduler)
    try:

        async def scenario():
            long = asyncio.create_task(loop.generate(gen(tok, 0, max_new_tokens=512, top_k=0, top_p=1.0)))
            while scheduler.live_rows == 0:
                await asyncio.sleep(0.001)
            results = await asyncio.gather(*(loop.generate(request) for request in requests), loop.score(score(tok, 1)))
            long.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long
            return results

        results = asyncio.run(scenario())
        assert results[:-1] == expected
        assert results[-1].log_scores == pytest.approx(expected_score.log_scores, abs=1e-5)
        freed = threading.Event()
        for _ in range(500):
            if scheduler.live_rows == 0 and not scheduler.has_work():
                freed.set()
                break
            threading.Event().wait(0.01)
        assert freed.is_set(), "the cancelled request's rows are still decoding"
    finally:
        loop.stop()


def test_a_background_lane_waits_while_another_lane_has_an_interactive_request(engine, tok):
    scheduler = Scheduler(engine, SchedulerConfig(), clock=Clock())
    other_lane_busy = {"now": True}
    scheduler.defer_background = lambda: other_lane_busy["now"]
    answers = Answers()
    scheduler.submit_scoring(score(tok, 0), answers.callback("job"), background=True)
    assert not scheduler.has_work()  # deferred: its loop leaves the cores to the interactive lane
    assert scheduler.run_iteration().scored == 0
    readings = 0
    while not scheduler.has_work():  # every reading of the test clock is 10 ms later
        readings += 1
        assert readings < 1000
    assert readings * 0.01 == pytest.approx(BACKGROUND_MAX_DEFER_S, abs=0.05)  # deferred at most this long
    assert scheduler.run_iteration().scored == 1 and "job" in answers.answered
    scheduler.submit_scoring(score(tok, 1), answers.callback("next"), background=True)
    assert not scheduler.has_work()  # a new deferral starts after a slice went through
    other_lane_busy["now"] = False
    assert scheduler.has_work() and scheduler.run_iteration().scored == 1
