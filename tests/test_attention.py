"""Attention over keys padded to a multiple of 16 (serve_app/engine/attention.py): transformers' eager arithmetic.

That a padded row then rounds as the row alone does is tested through the engine, on the model's own activations
(tests/test_engine.py, test_bfloat16_scores_identical_alone_and_in_a_batch: 19 of 20 identical without the
padding, 20 of 20 with it); random tensors did not reproduce the rounding difference."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine.attention import KEY_MULTIPLE, invariant_attention, padded_keys

pytestmark = pytest.mark.unit


def test_padded_keys_round_up_to_the_multiple():
    assert [padded_keys(n) for n in (1, 15, 16, 17, 92, 100)] == [16, 16, 16, 32, 96, 112]
    assert KEY_MULTIPLE == 16


def eager(query, key, value, bias):
    """transformers' eager T5 attention (unscaled scores, softmax in the activations' dtype)."""
    weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) + bias, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2)


def test_it_is_eager_attention_where_no_padding_is_needed():
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, 32, 16, generator=generator) for _ in range(3))
    bias = torch.randn(1, 4, 32, 32, generator=generator)
    ours, _ = invariant_attention(torch.nn.Module(), query, key, value, None, position_bias=bias)
    torch.testing.assert_close(ours, eager(query, key, value, bias), atol=1e-6, rtol=1e-6)


def test_padded_keys_weigh_nothing():
    """27 keys padded to 32: the same output as eager attention over the 27, to float32's rounding."""
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(2, 4, 5, 16, generator=generator)
    key, value = (torch.randn(2, 4, 27, 16, generator=generator) for _ in range(2))
    mask = torch.zeros(2, 1, 1, 27)
    mask[0, ..., 20:] = torch.finfo(torch.float32).min  # and a padded row inside the batch
    ours, _ = invariant_attention(torch.nn.Module(), query, key, value, mask)
    torch.testing.assert_close(ours, eager(query, key, value, mask), atol=1e-6, rtol=1e-6)
