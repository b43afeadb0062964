"""The decoding step as CUDA graphs: one replay instead of hundreds of kernel launches per token.

A decoding step at mT5-base is about 300 small kernels (12 layers of norms, projections,
attention and a feed-forward block). On a GPU at small batches their launches, not their
arithmetic, set the step's time. A CUDA graph records them once and replays them with one
launch, but it replays fixed shapes at fixed addresses. CachedDecoder's step has neither: it
attends over `column + 1` keys and `max(encoder lengths)` encoder columns, both changing as
rows join and leave, and writes the column by a Python index.

`FixedShapeStep` is the same arithmetic with every shape taken from the batch's buffers:
attention over the whole self-attention buffer with the columns after this step's masked (as
those before a row's start already are), over the whole encoder buffer with each row's padding
masked, the column to write a device tensor. Masked columns get the dtype's lowest bias and a
softmax weight of exactly 0, so the states match CachedDecoder's up to summation order.
Rows are padded to a power of two (spare rows of the buffers compute and are ignored), so a
handful of graphs serve every batch size.

`GraphedDecoder` captures one graph per (row bucket, buffer addresses and shapes) on CUDA and
replays it; buffers grow by doubling, so a long run captures a few graphs and then replays.
With `capture=False` it runs the fixed-shape step without graphs: on a CPU (where no graphs
exist) that is how tests check it gives CachedDecoder's answers. Switched on by the
ModelReplica's `decode_graphs` (config.yaml); off until a GPU measures it (`python -m bench gpu`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from serve_app.engine.decode_batch import DecodeBatch
from serve_app.engine.decoder import CachedDecoder

MAX_GRAPHS = 24  # captured graphs kept (least recently replayed dropped first): row buckets x buffer sizes


def row_bucket(rows: int, capacity: int) -> int:
    """Rows a step computes for `rows` live ones: the next power of two, within the buffers' capacity."""
    bucket = 1
    while bucket < rows:
        bucket *= 2
    return min(bucket, capacity)


class FixedShapeStep:
    """CachedDecoder's step with shapes fixed by the buffers and the column on the device (what a graph replays)."""

    def __init__(self, decoder: CachedDecoder) -> None:
        self.decoder = decoder
        self.shape = decoder.shape

    def run(
        self,
        rows: int,
        column: torch.Tensor,
        next_token: torch.Tensor,
        start: torch.Tensor,
        encoder_length: torch.Tensor,
        self_kv: torch.Tensor,
        cross_kv: torch.Tensor,
    ) -> torch.Tensor:
        """Decoder states [rows, d_model] for the first `rows` rows; writes their keys/values at `column` (a 1-element long tensor)."""
        d, s = self.decoder, self.shape
        lowest = torch.finfo(s.dtype).min
        columns, encoder_columns = self_kv.shape[4], cross_kv.shape[4]
        keys = torch.arange(columns, device=s.device)
        self_bias = d._position_bias(keys - column)[None, :, None, :]
        hidden_columns = (keys[None, :] < start[:rows, None]) | (keys[None, :] > column)
        self_bias = self_bias.masked_fill(hidden_columns[:, None, None, :], lowest)
        padding = torch.arange(encoder_columns, device=s.device)[None, :] >= encoder_length[:rows, None]
        cross_bias = torch.zeros((rows, 1, 1, encoder_columns), dtype=s.dtype, device=s.device).masked_fill(padding[:, None, None, :], lowest)

        hidden = d.decoder.embed_tokens(next_token[:rows])[:, None, :]
        for layer, block in enumerate(d.blocks):
            self_layer, cross_layer, feed_forward = block.layer
            attention = self_layer.SelfAttention
            normed = self_layer.layer_norm(hidden)
            query = d._heads(attention.q(normed))
            cache = self_kv[layer, :, :rows]
            cache[0].index_copy_(2, column, d._heads(attention.k(normed)))
            cache[1].index_copy_(2, column, d._heads(attention.v(normed)))
            hidden = hidden + attention.o(d._attend(query, cache[0], cache[1], self_bias))

            attention = cross_layer.EncDecAttention
            query = d._heads(attention.q(cross_layer.layer_norm(hidden)))
            cross = cross_kv[layer, :, :rows]
            hidden = hidden + attention.o(d._attend(query, cross[0], cross[1], cross_bias))
            hidden = feed_forward(hidden)
        return d.decoder.final_layer_norm(hidden)[:, 0]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    states: torch.Tensor  # the graph's output buffer [bucket, d_model]


class GraphedDecoder:
    """A decoder for Seq2SeqEngine with CachedDecoder's face (`shape`, `cross_keys_values`, `step`), stepping through graphs."""

    def __init__(self, decoder: CachedDecoder, capture: bool = True, max_graphs: int = MAX_GRAPHS) -> None:
        if capture and decoder.shape.device.type != "cuda":
            raise ValueError(f"decode_graphs needs a CUDA device; this model runs on {decoder.shape.device.type}")
        self.cached = decoder
        self.shape = decoder.shape
        self.fixed = FixedShapeStep(decoder)
        self.capture = capture
        self.max_graphs = max_graphs
        self.column = torch.zeros(1, dtype=torch.long, device=decoder.shape.device)  # the graphs' one moving input
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.captured = 0  # graphs captured so far (a long run should stop capturing)
        self._lock = threading.Lock()  # scheduler lanes share one engine: steps take turns over `column` and the graphs
        self._pool: tuple | None = None  # one memory pool for every graph: they replay one at a time

    def cross_keys_values(self, encoder_hidden: torch.Tensor) -> torch.Tensor:
        return self.cached.cross_keys_values(encoder_hidden)

    def step(self, batch: DecodeBatch) -> torch.Tensor:
        """CachedDecoder.step's contract: feed every row its `next_token`, return the states [rows, d_model]."""
        with self._lock:
            column = batch.reserve_column()
            bucket = row_bucket(batch.rows, batch.capacity)
            self.column.fill_(column)  # a scalar written on the device stream: no host round trip
            inputs = (self.column, batch.next_token, batch.start, batch.encoder_length, batch.self_kv, batch.cross_kv)
            if self.capture:
                states = self._replay(bucket, inputs).clone()  # the next replay overwrites the graph's output
            else:
                states = self.fixed.run(bucket, *inputs)
            batch.length = column + 1
            return states[: batch.rows]

    def _replay(self, bucket: int, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # A graph reads the addresses it was captured with: any buffer the batch replaced (growth) is a new key.
        key = (bucket, *((tensor.data_ptr(), tuple(tensor.shape)) for tensor in inputs))
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._capture_graph(bucket, inputs)
            self.graphs[key] = graph
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        graph.graph.replay()
        return graph.states

    def _capture_graph(self, bucket: int, inputs: tuple[torch.Tensor, ...]) -> _Graph:
        # Warm up on a side stream first (lazy initialisation, cuBLAS workspaces), as torch's docs ask.
        # The warm-up writes this step's column too: the same values the replay writes again.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.fixed.run(bucket, *inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another lane's kernels on its own thread do not break this capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            states = self.fixed.run(bucket, *inputs)
        self._pool = self._pool or graph.pool()
        self.captured += 1
        return _Graph(graph, states)
