"""The decoding step CUDA graphs replay (serve_app/engine/graphed_step.py), checked on the CPU.

No graphs exist on a CPU; what a graph replays is the fixed-shape step, and that runs here
without capture: it must give CachedDecoder's states and, with seeded sampling, the same tokens,
through merges, drops, padded row buckets and buffer growth.
"""

from __future__ import annotations

import pytest
import torch

from serve_app.engine import GenerationRequest, SamplingParams, Seq2SeqEngine
from serve_app.engine.graphed_step import MIN_COLUMN_BUCKET, GraphedDecoder, bucket_shapes, column_bucket, row_bucket

pytestmark = pytest.mark.unit

PROMPTS = [
    "这家餐厅的服务态度很好,上菜速度也快",
    "物流太慢了",
    "新能源汽车的续航里程越来越长,充电桩也越来越多",
    "学校开学后",
]


def request(tok, index: int, **params) -> GenerationRequest:
    defaults = {
        "num_return_sequences": 1 + index % 3,
        "max_new_tokens": 8 + 9 * (index % 3),
        "temperature": 0.9,
        "top_k": 20 + index,
        "top_p": 0.9,
        "seed": 7 + index,
    }
    return GenerationRequest(
        tok(PROMPTS[index % len(PROMPTS)] * (1 + index % 2)).input_ids, SamplingParams(**{**defaults, **params})
    )


@pytest.fixture(scope="module")
def fixed_engine(demo_model) -> Seq2SeqEngine:
    engine = Seq2SeqEngine(demo_model.model)
    engine.decoder = GraphedDecoder(engine.decoder, capture=False)
    return engine


def test_row_buckets_are_powers_of_two_within_capacity():
    assert [row_bucket(rows, 64) for rows in (1, 2, 3, 5, 8, 9, 33, 64)] == [1, 2, 4, 8, 8, 16, 64, 64]
    assert row_bucket(5, 6) == 6  # never past the buffers


def test_fixed_shape_states_match_the_cached_decoders(engine, fixed_engine, tok):
    """Same rows, same step: attention over the whole buffers with masks gives the same states."""
    requests = [request(tok, index) for index in range(3)]  # 6 rows: bucket 8, two spare rows computed and ignored
    eager, fixed = engine.prefill(requests), fixed_engine.prefill(requests)
    assert eager.rows == 6
    for _ in range(3):
        with torch.inference_mode():
            expected = engine.decoder.step(eager)
            got = fixed_engine.decoder.step(fixed)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)
        assert fixed.length == eager.length
        with torch.inference_mode():  # feed both the same next tokens
            tokens = torch.arange(eager.rows) + 5
            eager.next_token[: eager.rows] = tokens
            fixed.next_token[: fixed.rows] = tokens


def test_seeded_generation_is_the_same_through_merges_drops_and_growth(engine, fixed_engine, tok):
    """A running batch that requests join and leave at different steps, past the first 64 columns."""

    def run(engine_: Seq2SeqEngine) -> dict[tuple[object, int], list[int]]:
        out: dict[tuple[object, int], list[int]] = {}
        batch = engine_.new_batch(capacity=2)
        arrivals = {0: [0, 1], 3: [2], 10: [3, 4], 40: [5]}
        step = 0
        while step == 0 or batch.rows or any(when > step for when in arrivals):
            if step in arrivals:
                joining = [
                    request(tok, index, max_new_tokens=90 if index == 1 else 8 + 9 * (index % 3))
                    for index in arrivals[step]
                ]
                batch.merge(engine_.prefill(joining, keys=arrivals[step]))
            for row in engine_.step(batch):
                out[(row.owner.key, row.owner.sequence)] = row.token_ids
            step += 1
        return out

    eager, fixed = run(engine), run(fixed_engine)
    assert len(eager) == sum(1 + index % 3 for index in range(6))
    assert max(len(tokens) for tokens in eager.values()) > 64  # the time axis grew past its first buffer
    assert fixed == eager


def test_graphs_are_refused_without_cuda(demo_model):
    with pytest.raises(ValueError, match="decode_graphs needs a CUDA device; this model runs on cpu"):
        Seq2SeqEngine(demo_model.model, decode_graphs=True)


def test_a_step_attends_over_the_columns_in_use_rounded_up_not_the_whole_buffers(fixed_engine, tok, monkeypatch):
    """After one long input and a long generation the buffers stay grown; a later short request must not read them
    whole at every step (on a GPU, gigabytes a step): the fixed-shape call sees power-of-two buckets of the columns
    in use, at least MIN_COLUMN_BUCKET."""
    seen: list[tuple[int, int, int]] = []
    cached_run = fixed_engine.decoder.cached.run

    def spy(rows, column, self_columns, encoder_columns, *rest):
        seen.append((rows, self_columns, encoder_columns))
        return cached_run(rows, column, self_columns, encoder_columns, *rest)

    long_ids = tok("".join(PROMPTS) * 4).input_ids
    batch = fixed_engine.prefill([GenerationRequest(long_ids, SamplingParams(max_new_tokens=130, seed=1))])
    with torch.inference_mode():
        for _ in range(130):
            fixed_engine.decoder.step(batch)
    grown_self, grown_cross = batch.self_kv.shape[4], batch.cross_kv.shape[4]
    batch.drop([0])
    short = tok("短").input_ids
    batch.merge(fixed_engine.prefill([GenerationRequest(short, SamplingParams(max_new_tokens=3, seed=1))]))
    monkeypatch.setattr(fixed_engine.decoder.cached, "run", spy)
    with torch.inference_mode():
        for _ in range(3):
            fixed_engine.decoder.step(batch)
    assert grown_self == 256 and grown_cross == len(long_ids) > 2 * MIN_COLUMN_BUCKET
    assert seen == [(1, MIN_COLUMN_BUCKET, MIN_COLUMN_BUCKET)] * 3, seen
    assert column_bucket(70, grown_cross) == 128 and column_bucket(3, grown_cross) == MIN_COLUMN_BUCKET
    assert column_bucket(len(long_ids), grown_cross) == grown_cross  # never past the buffer


@pytest.fixture
def faked_graphs(demo_model, monkeypatch) -> Seq2SeqEngine:
    """An engine whose steps go through the graph table on the CPU: a fake capture runs the fixed-shape step once, as
    a capture does, counts, and runs it again at each replay."""
    from serve_app.engine import graphed_step

    engine = Seq2SeqEngine(demo_model.model)
    decoder = GraphedDecoder(engine.decoder, capture=False)
    decoder.capture = True  # replay through the graph table, with the capture faked below
    engine.decoder = decoder

    class FakeGraph:
        def __init__(self, replay) -> None:
            self.replay = replay

    def fake_capture(self, shapes, inputs):
        self._fixed_shape(shapes, inputs)  # what a capture runs (its warm-up, then the recorded call)
        result = graphed_step._Graph(
            FakeGraph(lambda: setattr(result, "states", self._fixed_shape(shapes, inputs))), None
        )
        self.captured += 1
        return result

    monkeypatch.setattr(GraphedDecoder, "_capture_graph", fake_capture)
    return engine


def test_a_schedulers_batch_captures_every_bucket_at_start_up_and_none_while_serving(faked_graphs, engine, tok):
    """Graph keys, counted with a fake capture on the CPU: the scheduler's batch is allocated once for its lane's
    rows, the longest input and the widest time axis, and every bucket is captured before its first request; then
    traffic of every shape (late joiners, one to eight rows, an input near the window, a long generation) only
    replays, and the answers are the launched step's (float32)."""
    from serve_app.engine.decode_batch import self_columns_bound
    from serve_app.engine.requests import MAX_NEW_TOKENS
    from serve_app.scheduling.config import SchedulerConfig
    from serve_app.scheduling.scheduler import Scheduler
    from tests.test_scheduler import Answers, Clock, drain

    decoder = faked_graphs.decoder
    scheduler = Scheduler(faked_graphs, SchedulerConfig(max_batch_rows=8), clock=Clock(), row_limit=8)
    at_start = decoder.captured
    widths = (self_columns_bound(MAX_NEW_TOKENS), faked_graphs.max_input_tokens)
    assert at_start == len(bucket_shapes(8, *widths)) == 4 * 5 * 4  # rows 1-8 x self 64-1024 x encoder 64-512

    long_input = tok("".join(PROMPTS) * 12).input_ids[: faked_graphs.max_input_tokens - 10]
    requests = [request(tok, index) for index in range(9)]
    requests.append(GenerationRequest(long_input, SamplingParams(num_return_sequences=2, max_new_tokens=20, seed=3)))
    requests.append(request(tok, 9, max_new_tokens=150, num_return_sequences=1))
    answers = Answers()
    for key, generation in enumerate(requests):
        scheduler.submit_generation(generation, answers.callback(key))
        for _ in range(key % 4):
            scheduler.run_iteration()
    drain(scheduler)
    assert len(long_input) > 256 and decoder.captured == at_start  # served without a capture
    assert answers.answered == {key: engine.generate([generation])[0] for key, generation in enumerate(requests)}


def test_a_changed_row_budget_makes_the_batch_anew_once_it_is_empty(faked_graphs, engine, tok):
    """Fixed buffers do not grow: a raised max_batch_rows lets the running rows finish without new ones joining, then
    the batch is made anew at the new size, its buckets captured once; an idle lane does it at once."""
    from serve_app.engine.decode_batch import self_columns_bound
    from serve_app.engine.requests import MAX_NEW_TOKENS
    from serve_app.scheduling.config import SchedulerConfig
    from serve_app.scheduling.scheduler import Scheduler
    from tests.test_scheduler import Answers, Clock, drain

    decoder = faked_graphs.decoder

    def buckets(rows: int) -> int:
        return len(bucket_shapes(rows, self_columns_bound(MAX_NEW_TOKENS), faked_graphs.max_input_tokens))

    scheduler = Scheduler(faked_graphs, SchedulerConfig(max_batch_rows=4), clock=Clock(), row_limit=16)
    assert decoder.captured == buckets(4)
    requests = [request(tok, 0, num_return_sequences=2, max_new_tokens=30)]
    requests += [request(tok, key, num_return_sequences=2, max_new_tokens=10) for key in range(1, 4)]
    answers = Answers()
    scheduler.submit_generation(requests[0], answers.callback(0))
    scheduler.run_iteration()
    scheduler.reconfigure(SchedulerConfig(max_batch_rows=8))
    for key in range(1, 4):
        scheduler.submit_generation(requests[key], answers.callback(key))
    live = [report.live_rows for report in drain(scheduler)]
    assert answers.order[0] == 0 and max(live) == 6  # the first drained alone, then the three ran together in 8 rows
    assert decoder.captured == buckets(4) + buckets(8)  # no growth, no capture while serving
    assert answers.answered == {key: engine.generate([generation])[0] for key, generation in enumerate(requests)}

    scheduler.reconfigure(SchedulerConfig(max_batch_rows=2))
    assert scheduler.has_work()  # idle: the loop makes the batch anew now, not when the next request comes
    scheduler.run_iteration()
    assert not scheduler.has_work() and decoder.captured == buckets(4) + buckets(8) + buckets(2)


def test_a_replicas_lanes_make_their_batch_for_the_budgets_that_follow_not_for_the_defaults_first(faked_graphs, tok):
    """A ModelReplica builds its lanes at the default budgets and Serve hands it config.yaml's user_config just after:
    the fixed batch is made once, for those, and the replica's first reconfigure returns (Serve then marks it
    running) only when every lane has made it; with no reconfigure, the first request makes it."""
    from serve_app.engine.decode_batch import self_columns_bound
    from serve_app.engine.requests import MAX_NEW_TOKENS
    from serve_app.scheduling.config import SchedulerConfig
    from serve_app.scheduling.lanes import Lanes
    from serve_app.scheduling.scheduler import Scheduler
    from tests.test_scheduler import Answers, Clock, drain

    decoder = faked_graphs.decoder

    def buckets(rows: int) -> int:
        return len(bucket_shapes(rows, self_columns_bound(MAX_NEW_TOKENS), faked_graphs.max_input_tokens))

    schedulers = [Scheduler(faked_graphs, SchedulerConfig(), row_limit=16, config_follows=True) for _ in range(2)]
    assert decoder.captured == 0 and not any(scheduler.batch_ready for scheduler in schedulers)
    lanes = Lanes(schedulers, cores=2)
    try:
        lanes.reconfigure(SchedulerConfig(max_batch_rows=8))
        assert lanes.wait_for_batches(timeout_s=60)
        assert decoder.captured == 2 * buckets(8)  # each lane's own buffers, and no 16-row (or 64-row) set first
    finally:
        lanes.stop()

    alone = Scheduler(faked_graphs, SchedulerConfig(max_batch_rows=4), clock=Clock(), config_follows=True)
    before = decoder.captured
    answers = Answers()
    alone.submit_generation(request(tok, 0), answers.callback("first"))
    drain(alone)
    assert "first" in answers.answered and alone.batch_ready and decoder.captured == before + buckets(4)


def test_a_batch_that_cannot_be_made_anew_leaves_the_lane_an_empty_one_and_is_tried_again(
    faked_graphs, engine, tok, monkeypatch
):
    """The old batch's buffers go before the new one's come (two lanes' caches would not fit); when the new one
    cannot be made (out of memory), the iteration fails, the lane keeps an empty batch, and the next makes it."""
    from serve_app.scheduling.config import SchedulerConfig
    from serve_app.scheduling.scheduler import Scheduler
    from tests.test_scheduler import Answers, Clock, drain

    scheduler = Scheduler(faked_graphs, SchedulerConfig(max_batch_rows=4), clock=Clock(), row_limit=16)
    new_batch, failures = faked_graphs.new_batch, []

    def out_of_memory_once(capacity: int = 8, row_limit: int | None = None):
        if capacity and not failures:
            failures.append(capacity)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 14.00 GiB")
        return new_batch(capacity=capacity, row_limit=row_limit)

    monkeypatch.setattr(faked_graphs, "new_batch", out_of_memory_once)
    scheduler.reconfigure(SchedulerConfig(max_batch_rows=8))
    with pytest.raises(torch.OutOfMemoryError):
        scheduler.run_iteration()
    assert failures == [8] and scheduler.has_work()  # an empty batch of no rows, to be made anew
    answers = Answers()
    generation = request(tok, 0)
    scheduler.submit_generation(generation, answers.callback("after"))
    drain(scheduler)
    assert answers.answered == {"after": engine.generate([generation])[0]} and not scheduler.has_work()


def test_generate_with_graphs_replays_from_its_second_call_on(faked_graphs, engine, tok):
    """generate() builds its rows afresh at each call; with graphs they decode in a batch the thread keeps, so a
    timed loop of the same requests replays only, and the tokens are the launched step's (float32)."""
    requests = [request(tok, index) for index in range(3)]
    first = faked_graphs.generate(requests)
    captured = faked_graphs.decoder.captured
    assert faked_graphs.generate(requests) == first == engine.generate(requests)
    assert captured > 0 and faked_graphs.decoder.captured == captured


def test_out_of_memory_inside_a_capture_is_the_out_of_memory_it_is(faked_graphs, tok, monkeypatch):
    """An allocation that fails while a graph is captured surfaces as the capture's own error when the capture ends;
    the scheduler still takes it for an out-of-memory: the newest request is refused with 503, the older decodes on
    to the answer it has alone."""
    from serve_app.scheduling.config import SchedulerConfig
    from serve_app.scheduling.errors import OutOfMemoryRefused
    from serve_app.scheduling.scheduler import Scheduler
    from tests.test_scheduler import Answers, Clock, drain

    older, newer = request(tok, 0, max_new_tokens=12), request(tok, 1, max_new_tokens=12)
    expected = faked_graphs.generate([older])[0]
    scheduler = Scheduler(faked_graphs, SchedulerConfig(max_batch_rows=8), clock=Clock())
    answers = Answers()
    scheduler.submit_generation(older, answers.callback("older"))
    scheduler.run_iteration()
    scheduler.submit_generation(newer, answers.callback("newer"))
    capture = GraphedDecoder._capture_graph
    failures = []

    def capture_failing_once(self, shapes, inputs):
        if not failures:
            failures.append(shapes)
            try:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            except torch.OutOfMemoryError:
                # What torch.cuda.graph's exit raises when the capture it ends was broken by the failed allocation.
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture")  # noqa: B904
        return capture(self, shapes, inputs)

    monkeypatch.setattr(GraphedDecoder, "_capture_graph", capture_failing_once)
    faked_graphs.decoder.graphs.clear()  # the next step captures
    scheduler.run_iteration()
    scheduler.run_iteration()
    assert failures and isinstance(answers.errors.get("newer"), OutOfMemoryRefused), answers.errors
    drain(scheduler)
    assert answers.answered["older"] == expected and "older" not in answers.errors
