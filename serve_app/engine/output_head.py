"""The vocabulary projection (lm_head) in the matmul layout this CPU runs fastest, chosen by measuring.

The projection is most of a decoding step: 250,112 x 768 weights read for every step, against
about half that for all 12 decoder layers together. The same product can be asked of the BLAS
three ways:

- `linear`: F.linear(x, W), W stored [vocab, d_model] (torch's default, a transposed-B GEMM);
- `transposed`: x @ Wt with Wt stored [d_model, vocab] contiguous (a plain GEMM);
- `weight_first`: (W @ x^T)^T, the weight as the left operand, its result copied into rows;
- `packed` (on a CPU with oneDNN): the weight reordered once for oneDNN's kernel, in blocks of
  VOCABULARY_BLOCK rows (packed_linear.py), the plain weight kept beside it for the rows sampling gathers.

Which is fastest depends on the CPU and the dtype, not on the arithmetic, and a transposed result must be copied into
rows before the top-k and the log-softmax read it, which can eat the gain; so the layout's own
forward includes that copy, and `choose_head_layout` times the three on the loaded projection at
load and keeps `linear` unless another is clearly faster. Every layout computes the same dot
products (the figures that led here: docs/perf-notes.md, "the lm_head layout").

The head also answers per block of VOCABULARY_BLOCK columns, in the weights' format (`block_logits`) or in
float32 whatever the format (`exact_block_logits`), so the normaliser over the vocabulary can reduce each block
while it is in cache (vocabulary.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from serve_app.engine.packed_linear import pack_weight, packed_matmul, packed_residual, packing_available

Layout = Literal["linear", "transposed", "weight_first", "packed"]
LAYOUTS: tuple[Layout, ...] = ("linear", "transposed", "weight_first", "packed")
# Columns per block: a block's float32 logits for a chunk of states stay in the core's cache.
VOCABULARY_BLOCK = 8192
LOW_PRECISION = (torch.bfloat16, torch.float16)

# A layout must beat `linear` by this much on the probe to be used: a near-tie is noise.
LAYOUT_MARGIN = 1.05
PROBE_ROWS = 32  # a decoding batch's rows
# Calls per layout after a warm-up. The probe runs on the loaded weight itself, because on a slice
# of the vocabulary the layouts do not rank as on the whole; its cost is 1 + 2 x PROBE_REPEATS projections per layout.
PROBE_REPEATS = 3

Timer = Callable[[], float]


class OutputHead(nn.Module):
    """lm_head (no bias) with its weight stored for `layout`; `weight` is always the [vocab, d_model] view."""

    def __init__(self, weight: torch.Tensor, layout: Layout) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout == "packed" and not packing_available(weight):
            raise ValueError(
                "the packed layout needs bfloat16 or float32 weights on a CPU with oneDNN, "
                f"got {weight.dtype} on {weight.device}"
            )
        self.layout = layout
        self.out_features, self.in_features = weight.shape
        stored = weight.detach().t().contiguous() if layout == "transposed" else weight.detach()
        self.stored = nn.Parameter(stored, requires_grad=False)
        self.ranges = [
            (first, min(first + VOCABULARY_BLOCK, self.out_features))
            for first in range(0, self.out_features, VOCABULARY_BLOCK)
        ]
        self.packed_blocks = (
            [pack_weight(self.stored[first:stop]) for first, stop in self.ranges] if layout == "packed" else []
        )

    @property
    def weight(self) -> torch.Tensor:
        return self.stored.t() if self.layout == "transposed" else self.stored

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Logits in the weights' format, as transformers' lm_head gives them."""
        flat = states.reshape(-1, self.in_features)
        if self.layout == "transposed":
            logits = flat @ self.stored
        elif self.layout == "weight_first":
            logits = (self.stored @ flat.t()).t().contiguous()  # top-k and log-softmax read rows: lay them out so
        elif self.layout == "packed":
            flat = flat.contiguous()
            logits = torch.cat([packed_matmul(flat, block) for block in self.packed_blocks], dim=1)
        else:
            logits = F.linear(flat, self.stored)
        return logits.reshape(*states.shape[:-1], self.out_features)

    def block_logits(self, states: torch.Tensor, block: int) -> torch.Tensor:
        """Logits of columns `ranges[block]` for states [rows, d_model], in the weights' format."""
        first, stop = self.ranges[block]
        if self.layout == "packed":
            return packed_matmul(states.contiguous(), self.packed_blocks[block])
        if self.layout == "transposed":
            return states @ self.stored[:, first:stop]
        return F.linear(states, self.stored[first:stop])

    def exact_block_logits(self, states: torch.Tensor, block: int) -> torch.Tensor:
        """float32 logits of columns `ranges[block]`: in bfloat16 the rounded logits plus their own rounding error,
        from a second matmul that accumulates it in float32 (within 2^-18 |logit| of float32's sum)."""
        states = states.to(self.stored.dtype)
        rounded = self.block_logits(states, block)
        if self.stored.dtype not in LOW_PRECISION:
            return rounded.float()
        first, stop = self.ranges[block]
        if self.layout == "packed":
            error = packed_residual(states.contiguous(), self.packed_blocks[block], rounded)
        elif self.layout == "transposed":
            error = torch.addmm(rounded, states, self.stored[:, first:stop], beta=-1)
        else:
            error = torch.addmm(rounded, states, self.stored[first:stop].t(), beta=-1)
        return rounded.float().add_(error)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}"


@dataclass(frozen=True)
class HeadChoice:
    layout: Layout
    reason: str


def layout_speedups(
    weight: torch.Tensor, timer: Timer = time.perf_counter, rows: int = PROBE_ROWS, repeats: int = PROBE_REPEATS
) -> dict[Layout, float]:
    """Each layout's speed against `linear` (>1: faster) on `weight` [vocab, d_model] itself.

    The layouts are alternated, so a machine's drift hits each alike (timed one after another, the
    ranking changed from one load to the next); the transposed and packed copies live only meanwhile. Each timed
    call follows an untimed one of the same layout, as a decoding step follows the last: the first call after
    another layout pays for allocations the steady state does not (the packed layout's by half)."""
    states = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    best: dict[Layout, float] = {}
    with torch.inference_mode():
        layouts = [layout for layout in LAYOUTS if layout != "packed" or packing_available(weight)]
        heads = {layout: OutputHead(weight, layout) for layout in layouts}
        for head in heads.values():
            head(states)  # first call: kernel choice, allocations
        for _ in range(repeats):
            for layout, head in heads.items():
                head(states)
                started = timer()
                head(states)
                best[layout] = min(best.get(layout, float("inf")), max(timer() - started, 1e-9))
        del heads
    return {layout: best["linear"] / seconds for layout, seconds in best.items()}


def choose_head_layout(
    weight: torch.Tensor, tied: bool = False, speedups: Callable[[torch.Tensor], dict[Layout, float]] = layout_speedups
) -> HeadChoice:
    """The fastest layout for `weight` on this CPU (measured, from LAYOUT_MARGIN over `linear`); `linear`
    on a GPU. A head `tied` to the embeddings is never `transposed` or `packed` (either would be a second copy)."""
    if weight.device.type != "cpu":
        return HeadChoice("linear", f"{weight.device.type}: torch's own linear")
    measured = dict(speedups(weight))
    if tied:
        measured.pop("transposed", None)
        measured.pop("packed", None)
    layout = max(measured, key=measured.__getitem__)
    figures = ", ".join(f"{name} {x:.2f}x" for name, x in measured.items() if name != "linear")
    if measured[layout] < LAYOUT_MARGIN:
        return HeadChoice("linear", f"linear: no layout {LAYOUT_MARGIN}x faster ({figures})")
    return HeadChoice(layout, f"{layout}: measured {measured[layout]:.2f}x linear ({figures})")


def is_tied(model: PreTrainedModel) -> bool:
    """lm_head shares the embeddings' tensor: a transposed copy would double that memory."""
    head: Any = model.lm_head
    return bool(head.weight is model.get_input_embeddings().weight)


def install_output_head(model: PreTrainedModel, layout: Layout) -> None:
    """Replace `model.lm_head` (a bias-free nn.Linear) by an OutputHead in `layout`, in place; `linear` keeps it."""
    head = model.lm_head
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise TypeError(f"lm_head must be a bias-free nn.Linear to re-lay, got {head!r}")
    if layout in ("transposed", "packed") and is_tied(model):
        raise ValueError(f"a tied lm_head is not re-laid as a {layout} copy (it would double the embeddings' memory)")
    if layout != "linear":
        model.lm_head = OutputHead(head.weight, layout)
