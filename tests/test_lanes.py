"""Scheduler lanes (serve_app/scheduling/lanes.py): several schedulers over one engine, sharing the cores.

The routing rule and the core share are driven directly; the lanes' loops are driven
through their public async face with the demo model, and their answers compared
with the engine's answers alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from pydantic import ValidationError

from serve_app.engine import GenerationRequest, SamplingParams, ScoringRequest
from serve_app.scheduling.config import SchedulerConfig
from serve_app.scheduling.lanes import Lanes, lane_count, least_outstanding
from serve_app.scheduling.loop import CoreShare
from serve_app.scheduling.scheduler import IterationReport, Scheduler
from serve_app.settings import AppSettings

pytestmark = pytest.mark.unit

PROMPTS = [
    "这家餐厅的服务态度很好,上菜速度也快",
    "物流太慢了",
    "新能源汽车的续航里程越来越长,充电桩也越来越多",
    "学校开学后",
]
LABELS = ["天气", "美食", "旅游", "新能源汽车"]


def gen(tok, index: int, **params) -> GenerationRequest:
    defaults = {
        "num_return_sequences": 2,
        "max_new_tokens": 8 + 4 * (index % 3),
        "temperature": 0.9,
        "top_k": 20,
        "top_p": 0.9,
        "seed": 7 + index,
    }
    return GenerationRequest(tok(PROMPTS[index % len(PROMPTS)]).input_ids, SamplingParams(**{**defaults, **params}))


def score(tok, index: int) -> ScoringRequest:
    labels = [tok(label).input_ids[:-1] for label in LABELS[: 2 + index % 3]]
    return ScoringRequest(
        tok(f"文本分类。\n候选标签：天气,美食。\n文本内容：{PROMPTS[index % len(PROMPTS)]}").input_ids, labels
    )


def test_a_new_request_goes_to_the_lane_with_the_fewest_outstanding(engine, tok):
    lanes = [Scheduler(engine, SchedulerConfig()) for _ in range(3)]
    assert least_outstanding(lanes) == 0, "equals: the first lane, so a lone request takes lane 0"
    for index in range(3):
        lanes[0].submit_generation(gen(tok, index), lambda result, error: None)
    lanes[1].submit_scoring(score(tok, 0), lambda result, error: None)
    assert [lane.outstanding for lane in lanes] == [3, 1, 0]
    assert least_outstanding(lanes) == 2
    lanes[2].submit_scoring(score(tok, 1), lambda result, error: None)
    lanes[2].submit_scoring(score(tok, 2), lambda result, error: None)
    assert least_outstanding(lanes) == 1
    lanes[1].run_iteration()  # its scoring request is answered: no longer outstanding
    assert lanes[1].outstanding == 0 and least_outstanding(lanes) == 1
    ticket = lanes[1].submit_generation(gen(tok, 1), lambda result, error: None)
    lanes[1].cancel(ticket)
    lanes[1].run_iteration()  # a caller that gave up no longer counts either
    assert lanes[1].outstanding == 0
    assert lanes[0].outstanding == 3, "requests in the running batch count until they are answered"
    lanes[0].run_iteration()
    assert lanes[0].outstanding == 3 and lanes[0].live_rows == 6


def test_busy_loops_share_the_cores_and_a_lone_loop_gets_them_all():
    cores = CoreShare(4)
    assert cores.threads_per_loop() == 4
    cores.enter()
    assert cores.threads_per_loop() == 4
    cores.enter()
    assert cores.threads_per_loop() == 2
    cores.enter()
    assert cores.threads_per_loop() == 1, "never fewer than one thread, never more threads than cores in all"
    cores.leave()
    cores.leave()
    assert cores.threads_per_loop() == 4


def test_lanes_answer_concurrent_callers_as_the_engine_alone_and_share_the_threads(engine, tok):
    generation = [gen(tok, index) for index in range(8)]
    scoring = [score(tok, index) for index in range(6)]
    expected_texts = [engine.generate([request])[0] for request in generation]
    expected_scores = [engine.score([request])[0] for request in scoring]
    seen: list[tuple[int, int, int]] = []  # (lane, torch threads of its iteration, live rows of the other lane)
    # The demo model is fast enough that one lane can finish its share before the other has rows at all (a lane's
    # 8 rows decode in ~25 ms while the other still prefills): so, in the crowd, each lane with rows waits once for
    # the other to hold rows too, and the iteration each runs next starts with both lanes busy.
    crowding, meeting = threading.Event(), threading.Barrier(2, timeout=10)
    met: set[int] = set()
    after_meeting: dict[int, int] = {}  # lane: torch threads of its first iteration once both lanes held rows

    def on_iteration(lane: int, report: IterationReport) -> None:
        seen.append((lane, lanes.loops[lane].torch_threads, lanes.schedulers[1 - lane].live_rows))
        if lane in met:
            after_meeting.setdefault(lane, lanes.loops[lane].torch_threads)
        elif crowding.is_set() and lanes.schedulers[lane].live_rows:
            with contextlib.suppress(threading.BrokenBarrierError):  # the other lane never held rows: asserted below
                meeting.wait()
                met.add(lane)

    lanes = Lanes(
        [Scheduler(engine, SchedulerConfig(max_batch_rows=8)) for _ in range(2)], cores=2, on_iteration=on_iteration
    )
    try:

        async def lone() -> list[list[int]]:
            return await lanes.generate(generation[0])

        assert asyncio.run(lone()) == expected_texts[0]
        assert {lane for lane, _, _ in seen} == {0} and all(threads == 2 for _, threads, _ in seen), (
            "a lone request runs on lane 0 with every core"
        )
        seen.clear()

        async def crowd() -> list:
            return await asyncio.gather(
                *(lanes.generate(request) for request in generation), *(lanes.score(request) for request in scoring)
            )

        crowding.set()
        results = asyncio.run(crowd())
    finally:
        lanes.stop()
    assert results[: len(generation)] == expected_texts, (
        "seeded texts are the same whichever lane ran them, beside whatever"
    )
    for got, expected in zip(results[len(generation) :], expected_scores, strict=True):
        assert got.log_scores == pytest.approx(expected.log_scores, abs=1e-5)
    assert {lane for lane, _, _ in seen} == {0, 1}, "concurrent work is split across both lanes"
    assert all(threads <= 2 for _, threads, _ in seen), "two lanes never run more torch threads than the cores"
    assert met == {0, 1}, "both lanes held rows at once"
    assert after_meeting == {0: 1, 1: 1}, "while both lanes decode, each runs on its share of the cores"


def test_lane_count_auto_is_two_on_a_cpu_and_one_on_a_gpu():
    assert lane_count("auto", "cpu", 2) == 2
    assert lane_count("auto", "cpu", 16) == 2
    assert lane_count("auto", "cpu", 1) == 1, "one thread: one lane"
    assert lane_count("auto", "cuda", 16) == 1
    assert lane_count(4, "cpu", 2) == 2, "at most one lane per torch thread on a CPU"
    assert lane_count(3, "cuda", 1) == 3
    assert AppSettings(scheduler_lanes=3).scheduler_lanes == 3
    for bad in (0, 65, "many"):
        with pytest.raises(ValidationError, match="scheduler_lanes"):
            AppSettings(scheduler_lanes=bad)


def test_background_work_keeps_off_lane_0_and_interactive_work_goes_where_it_waits_least(engine, tok):
    lanes = Lanes([Scheduler(engine, SchedulerConfig()) for _ in range(2)], cores=2)
    try:
        assert lanes.pick(background=True) == 1  # even with every lane idle
        for index in range(3):
            lanes.schedulers[1].submit_scoring(score(tok, index), lambda result, error: None, background=True)
        assert lanes.pick(background=True) == 1 and lanes.pick() == 0
        single = Lanes([Scheduler(engine, SchedulerConfig())], cores=2)
        assert single.pick(background=True) == 0  # one lane (a GPU): it takes both kinds
        single.stop()
    finally:
        lanes.stop()


def test_a_background_lane_defers_to_an_interactive_request_in_another_lane(engine, tok):
    lanes = Lanes([Scheduler(engine, SchedulerConfig()) for _ in range(2)], cores=2)
    lanes.stop()  # no loop threads: the schedulers are driven by hand below
    first, second = lanes.schedulers
    assert first.defer_background is None and second.defer_background is not None
    assert not second.defer_background()
    first.submit_scoring(score(tok, 0), lambda result, error: None)
    assert second.defer_background()  # lane 0 has an interactive request outstanding
    first.run_iteration()
    assert not second.defer_background()
    first.submit_scoring(score(tok, 1), lambda result, error: None, background=True)
    assert not second.defer_background()  # background work elsewhere is no reason to wait
