"""How many decoder rows fit in the memory the device has, from what one cached token costs.

A decoding row holds, per layer, keys and values for its encoder tokens (cross-attention) and
for every position it has decoded (self-attention): `cache_bytes_per_token` each. The row
budget assumes the worst row the service accepts (the whole input window and the largest
max_new_tokens) and the batch's habit of doubling its buffers when it grows, plus the row's
float32 logits and the sampling pass's copies of them. config.yaml's `max_batch_rows` stays
the cap: memory only ever lowers it, so where memory is plenty nothing changes. With
`decode_graphs` a lane's caches are allocated at start for its rows, which a worst-case row's
share covers (the longest input and self_columns_bound(MAX_NEW_TOKENS) columns).

On a GPU the free memory is what CUDA reports after the weights are loaded, limited to the
replica's share of the GPU when it reserved a fraction of one (`replica_gpus: 0.25`), which
is also given to torch's allocator as a hard limit. The share counts the process's CUDA context,
which lives outside torch's allocator: four replicas at 0.25 each would otherwise over-subscribe
the GPU by four contexts. On a CPU it is the host's available memory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from serve_app.engine.decode_batch import BatchShape

logger = logging.getLogger(__name__)

# Share of the free memory the caches may take: the rest is for activations, the allocator's
# fragmentation and whatever else the process holds.
USABLE_SHARE = 0.8
# The batch doubles its buffers when it outgrows them, and the old buffer lives during the copy.
GROWTH_FACTOR = 2
# float32 logits of a row [vocab], and the sampling pass's copies of them (scaled, masked, noised).
LOGIT_COPIES = 4
# A process's CUDA context (driver state, kernels' code, cuBLAS/cuDNN handles), outside torch's allocator: about
# 0.5 GB with torch 2.x on an H100; counted against a fractional share (confirm on a lent GPU: python -m bench gpu).
CUDA_CONTEXT_BYTES = 512 * 2**20


@dataclass(frozen=True)
class RowBudget:
    """Rows one replica can decode at once in `free_bytes`, and how that was reckoned."""

    rows: int
    free_bytes: int
    bytes_per_row: int

    @property
    def reason(self) -> str:
        return (
            f"{self.rows} rows fit: {self.free_bytes / 2**30:.1f} GiB free x {USABLE_SHARE} / "
            f"{self.bytes_per_row / 2**20:.0f} MiB per worst-case row"
        )


def cache_bytes_per_token(shape: BatchShape) -> int:
    """Keys and values of one token in every layer."""
    return shape.layers * 2 * shape.heads * shape.head_dim * torch.empty((), dtype=shape.dtype).element_size()


def worst_row_bytes(shape: BatchShape, max_input_tokens: int, max_new_tokens: int) -> int:
    """One row at the largest input and output the service accepts, with the buffers' growth."""
    cache = cache_bytes_per_token(shape) * (max_input_tokens + max_new_tokens) * GROWTH_FACTOR
    return cache + shape.vocab * 4 * LOGIT_COPIES


def row_budget(shape: BatchShape, max_input_tokens: int, max_new_tokens: int, free_bytes: int) -> RowBudget:
    per_row = worst_row_bytes(shape, max_input_tokens, max_new_tokens)
    return RowBudget(
        rows=max(1, int(free_bytes * USABLE_SHARE) // per_row), free_bytes=free_bytes, bytes_per_row=per_row
    )


def allocator_share_bytes(total_bytes: int, gpu_fraction: float, context_bytes: int = CUDA_CONTEXT_BYTES) -> int:
    """What torch's allocator may hold of a GPU with `total_bytes` when the replica reserved `gpu_fraction` of it:
    the share less the process's CUDA context, which the share must also hold."""
    return max(0, int(total_bytes * gpu_fraction) - context_bytes)


def free_device_bytes(device: torch.device, gpu_fraction: float | None = None) -> int:
    """Memory the caches may come from: CUDA's free memory (within `gpu_fraction`, a share below one
    GPU, or None for a whole one), or the host's available memory."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        if gpu_fraction is not None:
            free = min(free, allocator_share_bytes(total, gpu_fraction) - torch.cuda.memory_reserved(device))
        return max(0, free)
    return host_available_bytes()


def host_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The kernel's estimate of memory available without swapping (MemAvailable), else free pages."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def limit_gpu_share(device: torch.device, gpu_fraction: float | None) -> None:
    """A replica that reserved a fraction of a GPU keeps to it: torch's allocator refuses beyond it
    (an out-of-memory answer, 503) instead of taking the neighbours' share."""
    if device.type == "cuda" and gpu_fraction is not None:
        _, total = torch.cuda.mem_get_info(device)
        fraction = max(allocator_share_bytes(total, gpu_fraction), 1) / total
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        logger.info(
            "this replica may use %.0f %% of %s's memory: its %.0f %% share less its CUDA context (%.1f GiB)",
            100 * fraction,
            device,
            100 * gpu_fraction,
            CUDA_CONTEXT_BYTES / 2**30,
        )
