"""Linear layers with their weights laid out once for oneDNN, on a CPU where that measures faster.

torch's `F.linear` hands oneDNN a plain weight and lets it reorder the weight into its blocked layout on every
call: for a decoding step's small batches that reorder is a large part of the matmul. torch.compile's CPU backend
avoids it by reordering each weight once at compile time (`mkldnn._reorder_linear_weight`) and calling the packed
kernel (`mkldnn._linear_pointwise`); this module does the same without compiling. The packed kernel computes the
same dot products in the same order for any row count (tested: in bfloat16 identical outputs to `F.linear`; in
float32 oneDNN's kernel, not MKL's, so float32-accurate sums in another order, and 2-2.8x faster at 1-32 rows).

`pack_linears` replaces every linear layer of the encoder and decoder when a probe on the model's own feed-forward
weight, at a decoding batch's rows, measures the packed kernel at least PACK_MARGIN times as fast (the start-up log
says the ratio): on the 2-core AMD EPYC (AVX512-BF16) box it measured 1.2-1.35x at 32 rows in bfloat16.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from serve_app.engine.linear_swap import replace_linears

PACK_MARGIN = 1.05
PROBE_ROWS = 32  # a decoding batch; the packing is a hint for this many rows, any row count works
PROBE_REPEATS = 5


PACKED_DTYPES = (torch.bfloat16, torch.float32)


def packing_available(weight: torch.Tensor) -> bool:
    """oneDNN packing exists for bfloat16 and float32 weights on a CPU build with mkldnn."""
    mkldnn: bool = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return weight.device.type == "cpu" and weight.dtype in PACKED_DTYPES and mkldnn


def pack_weight(weight: torch.Tensor, rows: int = PROBE_ROWS) -> torch.Tensor:
    """The weight [out, in] reordered once for oneDNN's kernel (an opaque mkldnn tensor)."""
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)
    return packed


def packed_matmul(states: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """states [rows, in] @ weight^T in the weights' dtype, as F.linear gives it."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(states, packed, None, "none", [], "")
    return out


def packed_residual(states: torch.Tensor, packed: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """states @ weight^T - rounded, accumulated in float32 before it is rounded (oneDNN's add post-op): the
    rounding error of `rounded`, itself small enough that its own rounding is negligible."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise.binary(states, rounded.neg(), packed, None, "add")
    return out


class PackedLinear(nn.Module):
    """A bias-free linear layer with a oneDNN-packed weight; `weight` is the packed tensor (its dtype is the
    layer's, which is what transformers' T5 blocks read of it)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = pack_weight(weight)

    @property
    def weight(self) -> torch.Tensor:
        return self.packed

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        flat = states.reshape(-1, self.in_features)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        return packed_matmul(flat, self.packed).reshape(*states.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


@dataclass(frozen=True)
class PackChoice:
    packed: bool
    reason: str


def packing_speedup(
    weight: torch.Tensor, timer: Callable[[], float] = time.perf_counter, rows: int = PROBE_ROWS
) -> float:
    """The packed kernel's speed against F.linear on `weight` at `rows` rows (>1: faster), alternated."""
    states = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    packed = pack_weight(weight, rows)
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "plain": lambda: nn.functional.linear(states, weight),
        "packed": lambda: packed_matmul(states, packed),
    }
    best = dict.fromkeys(runs, float("inf"))
    with torch.inference_mode():
        for run in runs.values():
            run()  # first call: kernel choice, allocations
        for _ in range(PROBE_REPEATS):
            for name, run in runs.items():
                started = timer()
                for _ in range(4):
                    run()
                best[name] = min(best[name], max(timer() - started, 1e-9))
    return best["plain"] / best["packed"]


def choose_packing(weight: torch.Tensor, speedup: Callable[[torch.Tensor], float] = packing_speedup) -> PackChoice:
    """Pack the model's linear layers when that measures PACK_MARGIN faster on `weight` (a feed-forward layer's)."""
    if not packing_available(weight):
        return PackChoice(
            False, f"plain: no oneDNN packing for {str(weight.dtype).removeprefix('torch.')} on {weight.device.type}"
        )
    ratio = speedup(weight)
    if ratio < PACK_MARGIN:
        return PackChoice(False, f"plain: oneDNN packing measured {ratio:.2f}x (packed from {PACK_MARGIN}x)")
    return PackChoice(True, f"packed for oneDNN: measured {ratio:.2f}x plain at {PROBE_ROWS} rows")


def pack_linears(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every bias-free nn.Linear of `model` (but those named in `skip`) by a PackedLinear, in place;
    returns how many."""
    return replace_linears(
        model,
        lambda layer: PackedLinear(layer.weight),
        lambda name, layer: layer.bias is None and name.split(".")[-1] not in skip,
    )
