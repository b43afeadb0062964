"""Row budgets from the memory the device has: what one cached token costs, the worst row, the cap."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine.decode_batch import BatchShape
from serve_app.engine.memory import (
    GROWTH_FACTOR,
    LOGIT_COPIES,
    USABLE_SHARE,
    cache_bytes_per_token,
    free_device_bytes,
    host_available_bytes,
    row_budget,
    worst_row_bytes,
)
from serve_app.engine.requests import MAX_NEW_TOKENS
from serve_app.scheduling.config import SchedulerConfig

pytestmark = pytest.mark.unit

GIB = 2**30


def mt5_base(dtype: torch.dtype) -> BatchShape:
    return BatchShape(
        layers=12, heads=12, head_dim=64, d_model=768, dtype=dtype, device=torch.device("cpu"), vocab=250_112
    )


def test_a_cached_token_costs_keys_and_values_in_every_layer():
    assert cache_bytes_per_token(mt5_base(torch.float32)) == 12 * 2 * 12 * 64 * 4 == 73_728
    assert cache_bytes_per_token(mt5_base(torch.bfloat16)) == 36_864


def test_the_worst_row_is_the_whole_window_grown_plus_its_logits():
    per_row = worst_row_bytes(mt5_base(torch.float32), 512, MAX_NEW_TOKENS)
    assert per_row == 73_728 * (512 + 512) * GROWTH_FACTOR + 250_112 * 4 * LOGIT_COPIES
    assert 140 * 2**20 < per_row < 150 * 2**20  # about 148 MiB in float32 at mT5-base's shapes


@pytest.mark.parametrize(
    ("free_gib", "dtype", "rows"),
    [(4, torch.float32, 22), (4, torch.bfloat16, 43), (40, torch.bfloat16, 432), (0, torch.float32, 1)],
)
def test_rows_are_what_the_free_memory_holds(free_gib, dtype, rows):
    budget = row_budget(mt5_base(dtype), 512, MAX_NEW_TOKENS, free_gib * GIB)
    assert budget.rows == rows
    assert budget.rows == max(1, int(free_gib * GIB * USABLE_SHARE) // budget.bytes_per_row)
    assert f"{free_gib:.1f} GiB free" in budget.reason and f"{budget.rows} rows fit" in budget.reason


def test_memory_only_ever_lowers_config_yamls_rows():
    asked = SchedulerConfig(max_batch_rows=64, max_prefill_tokens=4096)
    assert asked.within_rows(22) == SchedulerConfig(max_batch_rows=22, max_prefill_tokens=4096)
    assert asked.within_rows(432) is asked
    assert asked.within_rows(0).max_batch_rows == 1


def test_host_memory_is_the_kernels_available_estimate(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   18000000 kB\n")
    assert host_available_bytes(meminfo) == 18_000_000 * 1024
    assert host_available_bytes(tmp_path / "absent") > 0  # free pages when there is no /proc
    assert free_device_bytes(torch.device("cpu")) == pytest.approx(host_available_bytes(), rel=0.5)


def test_a_fractional_gpu_share_holds_the_cuda_context_too() -> None:
    """Four replicas at 0.25 of an 80 GiB GPU: their allocators and their four CUDA contexts fit in the GPU."""
    from serve_app.engine.memory import CUDA_CONTEXT_BYTES, allocator_share_bytes

    total = 80 * GIB
    share = allocator_share_bytes(total, 0.25)
    assert share == 20 * GIB - CUDA_CONTEXT_BYTES
    assert 4 * (share + CUDA_CONTEXT_BYTES) <= total
    assert allocator_share_bytes(GIB, 0.25) == 0  # a share smaller than a context leaves the allocator nothing


def test_buffers_double_within_their_limits_and_past_them_only_as_far_as_needed() -> None:
    from serve_app.engine.decode_batch import grown_size

    assert grown_size(8, 8, None) == 8 and grown_size(8, 9, None) == 16  # doubling, few copies in a long run
    assert grown_size(189, 190, 189) == 190  # a lane capped at 189 rows never allocates 378 (or 256)
    assert grown_size(100, 120, 189) == 189 and grown_size(8, 40, None) == 40
    assert grown_size(300, 310, 512) == 512  # the cross buffer doubles, up to the longest input the engine accepts
    assert grown_size(256, 600, 512) == 600  # one merge that needs more than the limit gets exactly that


def test_a_schedulers_batch_grows_within_its_row_limit_and_the_input_window(engine, tok) -> None:
    from serve_app.engine import SamplingParams
    from serve_app.engine.requests import GenerationRequest

    def request(words: int, sequences: int) -> GenerationRequest:
        ids = tok("一二三四五六七八九十" * words).input_ids[: engine.max_input_tokens]
        return GenerationRequest(ids, SamplingParams(num_return_sequences=sequences, max_new_tokens=2, seed=1))

    batch = engine.new_batch(capacity=4, row_limit=5)
    batch.merge(engine.prefill([request(1, 4)]))
    first_columns = batch.cross_kv.shape[4]
    batch.merge(engine.prefill([request(2, 1)]))
    assert batch.capacity == 5  # doubling to 8 would pass the row limit of 5
    assert batch.cross_kv.shape[4] == min(2 * first_columns, engine.max_input_tokens)  # doubled: no regrowth per input
    batch.merge(engine.prefill([request(200, 1)]))  # past the window: truncated to it
    assert batch.cross_kv.shape[4] == engine.max_input_tokens and batch.capacity == 6


@pytest.mark.parametrize("max_input_tokens", [64, 512, 2048])
def test_buffers_preallocated_for_graphs_fit_the_worst_case_rows_the_budget_reckons_with(max_input_tokens) -> None:
    """With decode_graphs a batch's buffers are allocated once, for every row the lane's memory holds, the longest
    input and the widest time axis: that must cost no more per row than the worst-case row the budget divides the
    memory by, or preallocating the budget's rows would pass the memory it measured."""
    from serve_app.engine.decode_batch import self_columns_bound

    shape = mt5_base(torch.bfloat16)
    preallocated = cache_bytes_per_token(shape) * (max_input_tokens + self_columns_bound(MAX_NEW_TOKENS))
    assert self_columns_bound(MAX_NEW_TOKENS) == 2 * MAX_NEW_TOKENS == 1024
    assert preallocated <= worst_row_bytes(shape, max_input_tokens, MAX_NEW_TOKENS)
