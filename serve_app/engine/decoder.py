"""mT5's decoder, one token per row per call, over a DecodeBatch's own key/value buffers.

transformers' caches hold one batch whose rows share one length; continuous batching
needs rows that joined at different steps in one pass. This runs the same modules
(the checkpoint's own weights, layer norms and feed-forward blocks) with the
batch's buffers and masks instead.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import MT5ForConditionalGeneration

from serve_app.engine.attention import padded_keys
from serve_app.engine.decode_batch import BatchShape, DecodeBatch


def decoder_blocks(model: MT5ForConditionalGeneration) -> list[Any]:
    """The decoder's T5 blocks (transformers types their parts only as nn.Module: read as Any)."""
    return list(model.decoder.block)


def relative_attention(model: MT5ForConditionalGeneration) -> Any:
    """The decoder's first self-attention, which holds the relative position bias every layer shares."""
    return decoder_blocks(model)[0].layer[0].SelfAttention


class CachedDecoder:
    def __init__(self, model: MT5ForConditionalGeneration) -> None:
        self.decoder: Any = model.decoder
        self.blocks = decoder_blocks(model)
        config = model.config
        parameter = next(model.parameters())
        self.shape = BatchShape(
            layers=len(self.blocks),
            heads=config.num_heads,
            head_dim=config.d_kv,
            d_model=config.d_model,
            dtype=parameter.dtype,
            device=parameter.device,
            vocab=model.lm_head.out_features,
        )
        self.relative = relative_attention(model)

    def cross_keys_values(self, encoder_hidden: torch.Tensor) -> torch.Tensor:
        """Each layer's cross-attention keys and values: [layers, 2, batch, heads, length, head_dim]."""
        batch, length, _ = encoder_hidden.shape
        s = self.shape
        out = torch.empty((s.layers, 2, batch, s.heads, length, s.head_dim), dtype=s.dtype, device=s.device)
        for layer, block in enumerate(self.blocks):
            attention = block.layer[1].EncDecAttention
            for slot, projection in enumerate((attention.k, attention.v)):
                out[layer, slot] = projection(encoder_hidden).view(batch, length, s.heads, s.head_dim).transpose(1, 2)
        return out

    def step(self, batch: DecodeBatch) -> torch.Tensor:
        """Feed every row its `next_token`; returns the decoder states [rows, d_model] that choose the next ones."""
        column = batch.reserve_column()
        states = self.run(
            batch.rows,
            column,
            attended_columns(column + 1, batch.self_kv.shape[4]),
            attended_columns(batch.encoder_columns, batch.cross_kv.shape[4]),
            batch.next_token,
            batch.start,
            batch.encoder_length,
            batch.self_kv,
            batch.cross_kv,
        )
        batch.length = column + 1
        return states

    def run(
        self,
        rows: int,
        column: int | torch.Tensor,
        self_columns: int,
        encoder_columns: int,
        next_token: torch.Tensor,
        start: torch.Tensor,
        encoder_length: torch.Tensor,
        self_kv: torch.Tensor,
        cross_kv: torch.Tensor,
    ) -> torch.Tensor:
        """The first `rows` rows' states [rows, d_model]; writes their keys/values at `column`.

        Attends over `self_columns` self-attention and `encoder_columns` encoder columns. `step` passes
        exactly those in use and `column` as an int; a CUDA graph (graphed_step.py) passes them rounded
        up to powers of two and `column` as a 1-element device tensor, so every shape is fixed by the buckets.
        Columns before a row's start or after `column` are masked: float32's lowest bias, a softmax
        weight of exactly 0. Scores, biases and the softmax are float32 whatever the weights' format.
        """
        s = self.shape
        lowest = torch.finfo(torch.float32).min
        # The bias depends on the key - query distance only, so one [heads, 1, keys] bias serves every row.
        keys = torch.arange(self_columns, device=s.device)
        self_bias = self._position_bias(keys - column)[None, :, None, :]
        hidden_columns = (keys[None, :] < start[:rows, None]) | (keys[None, :] > column)
        self_bias = self_bias.masked_fill(hidden_columns[:, None, None, :], lowest)
        padding = torch.arange(encoder_columns, device=s.device)[None, :] >= encoder_length[:rows, None]
        cross_bias = torch.zeros((rows, 1, 1, encoder_columns), dtype=torch.float32, device=s.device).masked_fill(
            padding[:, None, None, :], lowest
        )

        hidden = self.decoder.embed_tokens(next_token[:rows])[:, None, :]
        for layer, block in enumerate(self.blocks):
            self_layer, cross_layer, feed_forward = block.layer
            attention = self_layer.SelfAttention
            normed = self_layer.layer_norm(hidden)
            query = self._heads(attention.q(normed))
            cache = self_kv[layer, :, :rows, :, :self_columns]
            _write_column(cache[0], column, self._heads(attention.k(normed)))
            _write_column(cache[1], column, self._heads(attention.v(normed)))
            hidden = hidden + attention.o(self._attend(query, cache[0], cache[1], self_bias))

            attention = cross_layer.EncDecAttention
            query = self._heads(attention.q(cross_layer.layer_norm(hidden)))
            cross = cross_kv[layer, :, :rows, :, :encoder_columns]
            hidden = hidden + attention.o(self._attend(query, cross[0], cross[1], cross_bias))
            hidden = feed_forward(hidden)
        states: torch.Tensor = self.decoder.final_layer_norm(hidden)[:, 0]
        return states

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        """[rows, 1, heads * head_dim] -> [rows, heads, 1, head_dim]."""
        return states.view(states.shape[0], 1, self.shape.heads, self.shape.head_dim).transpose(1, 2)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """One query per row against its keys: two batched matmuls and a float32 softmax. For a single query
        torch's fused CPU attention costs several times this (it tiles for long queries)."""
        # T5 does not scale the dot product (its initialisation folds the factor into the weights).
        scores = torch.matmul(query, key.transpose(-1, -2)).float() + bias
        weights = torch.softmax(scores, dim=-1).to(value.dtype)
        return torch.matmul(weights, value).transpose(1, 2).reshape(query.shape[0], 1, -1)

    def _position_bias(self, relative: torch.Tensor) -> torch.Tensor:
        """T5's learned bias for key - query distances `relative` [keys] -> [heads, keys]."""
        buckets = self.relative._relative_position_bucket(
            relative,
            bidirectional=False,
            num_buckets=self.relative.relative_attention_num_buckets,
            max_distance=self.relative.relative_attention_max_distance,
        )
        bias: torch.Tensor = self.relative.relative_attention_bias(buckets).T.float()
        return bias


def attended_columns(used: int, width: int) -> int:
    """How many columns of a buffer `width` wide to attend over when `used` hold keys: all of them once at least
    half do, else `used` padded to KEY_MULTIPLE (attention.py: batch invariance). A slice of the buffer is strided,
    and the attention matmuls copy it first (3x their own time at 32 rows on the 2-core EPYC); the whole buffer is
    read in place, its unused columns masked to a weight of 0."""
    return width if 2 * used >= width else min(width, padded_keys(used))


def _write_column(cache: torch.Tensor, column: int | torch.Tensor, values: torch.Tensor) -> None:
    """cache [rows, heads, columns, head_dim][:, :, column] = values [rows, heads, 1, head_dim]."""
    if isinstance(column, torch.Tensor):
        cache.index_copy_(2, column, values)  # the index stays on the device (a graph replays it)
    else:
        cache[:, :, column] = values[:, :, 0]
