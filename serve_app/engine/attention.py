"""Batch-invariant attention for transformers' T5 blocks on a CPU: eager attention with its keys padded.

A row's numbers must not depend on the rows beside it. The matmuls give every row the same bits whatever the batch
(tested), but a padded batch makes every row's softmax run over the batch's longest key count, and the vectorised
softmax groups a row's sum by position within its vector lanes and handles a tail that is not a whole vector
apart: a row alone (92 keys: a tail of 12) and the same row in a batch of 100 keys (a tail of 4) sum the same
values in another grouping, and a few probabilities round differently. torch's fused CPU attention differs
likewise. Here every attention's keys are padded, masked, to a multiple of KEY_MULTIPLE: the row's own keys then
fall in the same lanes whatever the padding, and the masked ones add exact zeros. Tested bitwise: label scores and
seeded tokens alone equal those in a batch of 32, in float32 and bfloat16 (docs/perf-notes.md, "batch-invariant
on the CPU").

Registered with transformers under INVARIANT_ATTENTION, with eager attention's mask, and selected at load
(loading.py); the decoding step's own attention (decoder.py) pads its columns the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

INVARIANT_ATTENTION = "mt5_invariant_eager"
# 16 float32 lanes of AVX-512 (a multiple of AVX2's 8 and NEON's 4).
KEY_MULTIPLE = 16


def padded_keys(keys: int) -> int:
    """`keys` rounded up to a multiple of KEY_MULTIPLE."""
    return -(-keys // KEY_MULTIPLE) * KEY_MULTIPLE


def invariant_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' eager T5 attention (same arguments, same arithmetic) over keys padded to KEY_MULTIPLE."""
    scores = torch.matmul(query, key.transpose(2, 3))
    if scaling is not None and scaling != 1.0:
        scores = scores * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    keys = scores.shape[-1]
    extra = padded_keys(keys) - keys
    if extra:
        scores = F.pad(scores, (0, extra), value=torch.finfo(scores.dtype).min)
        value = F.pad(value, (0, 0, 0, extra))
    weights = torch.softmax(scores, dim=-1)
    out = torch.matmul(weights, value)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make INVARIANT_ATTENTION known to transformers (idempotent); returns its name for set_attn_implementation."""
    AttentionInterface.register(INVARIANT_ATTENTION, invariant_attention)
    AttentionMaskInterface.register(INVARIANT_ATTENTION, eager_mask)
    return INVARIANT_ATTENTION
