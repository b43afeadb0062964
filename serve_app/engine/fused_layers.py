"""mT5's layer norm and gated feed-forward as torch's fused kernels, swapped in at load.

transformers writes T5's RMS layer norm and its tanh-approximated GELU ("gelu_new") as chains of elementwise
ops (pow, mean, rsqrt, mul, cast; mul, pow, add, tanh, add, mul, mul), each a pass over the activations: on a
CPU those passes cost a fifth of a bfloat16 classification batch. torch has one kernel for each
(`F.rms_norm`, `F.gelu(approximate="tanh")`, the same formulas); the gated feed-forward's two input
projections also become one matmul of twice the width, which a decoding step's small batches run faster.

Same numbers in float32 (the tests hold our loaded model to transformers' own to 1e-5); in bfloat16 the norm
rounds once where transformers rounds twice.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# transformers' names for the tanh approximation of GELU that torch's `approximate="tanh"` computes.
TANH_GELUS = ("NewGELUActivation", "PytorchGELUTanh", "GELUTanh")


class RMSNorm(nn.Module):
    """T5's layer norm: scale by the root mean square, no mean subtracted, no bias."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.eps = eps

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(states, (states.shape[-1],), self.weight, self.eps)


class GatedFeedForward(nn.Module):
    """gelu_tanh(x W0) * (x W1), then W2: W0 and W1 as one projection of 2 x d_ff outputs."""

    def __init__(self, wi_0: nn.Module, wi_1: nn.Module, wo: nn.Module) -> None:
        super().__init__()
        both = torch.cat([_weight(wi_0), _weight(wi_1)], dim=0)
        self.d_ff = both.shape[0] // 2
        self.wi = _linear(both)
        self.wo = wo

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        gate, linear = self.wi(states).split(self.d_ff, dim=-1)
        out: torch.Tensor = self.wo(F.gelu(gate, approximate="tanh").mul_(linear))
        return out


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


def _linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


def fuse_layers(model: nn.Module) -> int:
    """Swap every T5 layer norm for RMSNorm and every gated tanh-GELU feed-forward for GatedFeedForward, in
    place, before any packing (packed_linear.py packs the fused projection like any other); returns how many
    modules were swapped. Other activations and layouts are left as they are."""
    swapped = 0
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        kind = type(module).__name__
        if kind.endswith("LayerNorm") and hasattr(module, "variance_epsilon"):
            setattr(parent, child, RMSNorm(module.weight, float(module.variance_epsilon)))
            swapped += 1
        elif kind.endswith("DenseGatedActDense") and type(module.act).__name__ in TANH_GELUS:
            setattr(parent, child, GatedFeedForward(module.wi_0, module.wi_1, module.wo))
            swapped += 1
    return swapped
