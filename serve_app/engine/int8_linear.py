"""int8 linear layers: weights per output channel, activations per row, sums in int32.

`dtype: int8` quantises the linear layers of a float32 model. torch's dynamic quantisation (the former path, now
deprecated in torch) scales a whole call's activations by one number: one loud row of a batch coarsens every other
row's rounding, so a text's scores moved with the batch around it (2e-2 alone against inside its batch), and one
scale per weight matrix coarsens every channel to the loudest one's. Here every output channel of a weight has
its own scale, fixed at load, and every row of activations is scaled on its own at each call; the int8 x int8
product is summed exactly in int32 (`torch._int_mm`, oneDNN's int8 GEMM on a CPU with VNNI), so a row's answer
is the same bits whatever rows share its batch. torchao's `Int8DynamicActivationInt8WeightConfig` is the same
scheme; without torch.compile it measured 4x slower here (docs/perf-notes.md, "int8 per row and channel").
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from serve_app.engine.linear_swap import replace_linears

# Symmetric int8: values in [-127, 127], so that negation never overflows.
INT8_MAX = 127.0
# A row or channel of zeros gets this scale instead of 0 (its quantised values are 0 either way).
SMALLEST_SCALE = 1e-12
# oneDNN's int8 kernels are fast for unsigned activations: int8 + 128 with this zero point.
UNSIGNED_ZERO_POINT = 128


def quantise_rows(values: torch.Tensor, zero_point: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of a float [rows, n] as integers and its float32 scale [rows, 1]: values ~= (q - zero_point) *
    scale; int8 with zero point 0, uint8 with UNSIGNED_ZERO_POINT (128, the only other one it takes)."""
    if zero_point not in (0, UNSIGNED_ZERO_POINT):
        raise ValueError(f"zero_point must be 0 or {UNSIGNED_ZERO_POINT}, got {zero_point}")
    scale = values.abs().amax(dim=1, keepdim=True).clamp_(min=SMALLEST_SCALE).div_(INT8_MAX)
    # |values / scale| <= 127 by construction: no clamp needed before the cast.
    quantised = values.div(scale).round_().to(torch.int8)
    if zero_point:
        # q + 128 as uint8 is q's bits with the top one flipped: cheaper than a float-to-uint8 cast.
        return quantised.view(torch.uint8).bitwise_xor_(zero_point), scale
    return quantised, scale


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (one scale per output channel) that quantises its input per row.

    `weight` is the int8 [out, in] view, which transformers' T5 blocks recognise as int8 (they skip casting
    activations to it). Input and output are float32. With oneDNN (x86 CPU builds) the weight is reordered once
    for its int8 kernel, which also applies the channel scales; elsewhere `torch._int_mm` multiplies."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, onednn: bool | None = None) -> None:
        """`onednn`: use oneDNN's kernel (None: where torch has it)."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        quantised, scale = quantise_rows(weight.detach().float())
        self.register_buffer("quantised", quantised)
        self.register_buffer("channel_scale", scale.reshape(-1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        available = weight.device.type == "cpu" and bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
        self.onednn = available if onednn is None else onednn and available
        if self.onednn:
            self.packed = torch.ops.onednn.qlinear_prepack(quantised, None)
            self.zero_points = torch.zeros(self.out_features, dtype=torch.int64)
        else:
            self.register_buffer("quantised_t", quantised.t().contiguous())  # [in, out], as _int_mm takes it

    @property
    def weight(self) -> torch.Tensor:
        return cast(torch.Tensor, self.quantised)

    def dequantised_rows(self, index: torch.Tensor) -> torch.Tensor:
        """The float32 rows `index` of the [out, in] weight this layer multiplies by (a head's rows for a few
        tokens)."""
        rows = cast(torch.Tensor, self.quantised).index_select(0, index).float()
        return rows.mul_(cast(torch.Tensor, self.channel_scale).index_select(0, index)[:, None])

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        flat = states.reshape(-1, self.in_features).float()
        out: torch.Tensor
        if self.onednn:
            # oneDNN's fast int8 kernels take unsigned activations with a zero point: q + 128, zero point 128,
            # the same exact int32 sums. It scales each column by its channel's scale; the rows' scales follow.
            unsigned, row_scale = quantise_rows(flat, UNSIGNED_ZERO_POINT)
            out = torch.ops.onednn.qlinear_pointwise(
                unsigned,
                1.0,
                UNSIGNED_ZERO_POINT,
                self.packed,
                self.channel_scale,
                self.zero_points,
                None,
                1.0,
                0,
                torch.float32,
                "none",
                [],
                "",
            ).mul_(row_scale)
        else:
            quantised, row_scale = quantise_rows(flat)
            sums = torch._int_mm(quantised, cast(torch.Tensor, self.quantised_t))
            out = sums.float().mul_(row_scale).mul_(cast(torch.Tensor, self.channel_scale))
        if self.bias is not None:
            out.add_(cast(torch.Tensor, self.bias))
        return out.reshape(*states.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel and row"


def quantise_linears(model: nn.Module, names: set[str] | None = None, skip: tuple[str, ...] = ()) -> int:
    """Replace every nn.Linear of `model` (or only those whose module name is in `names`), but those whose last
    name part is in `skip`, by an Int8Linear, in place; returns how many."""
    return replace_linears(
        model,
        lambda layer: Int8Linear(layer.weight, layer.bias),
        lambda name, _: name.split(".")[-1] not in skip and (names is None or name in names),
    )
