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
