"""The decoding step as CUDA graphs: one replay instead of hundreds of kernel launches per token.

A decoding step at mT5-base is about 300 small kernels (12 layers of norms, projections,
attention and a feed-forward block). On a GPU at small batches their launches, not their
arithmetic, set the step's time. A CUDA graph records them once and replays them with one
launch, but it replays fixed shapes at fixed addresses. CachedDecoder's step has neither: it
attends over `column + 1` keys and `max(encoder lengths)` encoder columns, both changing as
rows join and leave, and writes the column by a Python index.

A graph replays CachedDecoder.run with every shape fixed by buckets: attention over the
self-attention columns in use rounded up to a power of two, with the columns after this step's
masked (as those before a row's start already are), over the encoder columns in use rounded up
likewise, with each row's padding masked, the column to write a device tensor. The states match
the step's up to summation order. Rows are padded to a power of two too (spare rows of the
buffers compute and are ignored), so a handful of graphs serve every batch, and a step reads at
most twice the columns it uses, never the whole buffer a long request once grew.

`GraphedDecoder` captures one graph per (row bucket, column buckets, buffer addresses and shapes) on CUDA and
replays it; buffers grow by doubling (rows within the lane's row limit, encoder columns within the input
window), so a long run captures a few graphs and then replays; the scheduler's batch, and `generate()`'s on its
thread, outlive their requests, so their graphs are replayed again. Not yet: capturing the common buckets at
start-up (it needs buffers that never move, preallocated when graphs are on; the self-attention axis has a
bound to preallocate to: twice the smallest power-of-two multiple of INITIAL_COLUMNS holding max_new_tokens,
decode_batch.reserve_column, tested), so the first requests capture.
With `capture=False` it runs the same fixed-shape call without graphs: on a CPU (where no graphs
exist) that is how tests check it gives CachedDecoder's answers. Switched on by the
ModelReplica's `decode_graphs` (config.yaml); off until a GPU measures it (`python -m bench gpu`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from serve_app.engine.decode_batch import DecodeBatch
from serve_app.engine.decoder import CachedDecoder

# Captured graphs kept (least recently replayed dropped first): row buckets x column buckets x buffer sizes.
MAX_GRAPHS = 96


def row_bucket(rows: int, capacity: int) -> int:
    """Rows (or columns) a step computes for `rows` in use: the next power of two, within the buffers' capacity."""
    bucket = 1
    while bucket < rows:
        bucket *= 2
    return min(bucket, capacity)


column_bucket = row_bucket  # the same rule for the self-attention and encoder columns a step attends over


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    states: torch.Tensor  # the graph's output buffer [bucket, d_model]


class GraphedDecoder:
    """A decoder for Seq2SeqEngine with CachedDecoder's face (`shape`, `cross_keys_values`, `step`), stepping through
    graphs."""

    def __init__(self, decoder: CachedDecoder, capture: bool = True, max_graphs: int = MAX_GRAPHS) -> None:
        if capture and decoder.shape.device.type != "cuda":
            raise ValueError(f"decode_graphs needs a CUDA device; this model runs on {decoder.shape.device.type}")
        self.cached = decoder
        self.shape = decoder.shape
        self.capture = capture
        self.max_graphs = max_graphs
        self.column = torch.zeros(1, dtype=torch.long, device=decoder.shape.device)  # the graphs' one moving input
        self.graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self.captured = 0  # graphs captured so far (a long run should stop capturing)
        self._lock = threading.Lock()  # scheduler lanes share one engine: steps take turns over `column` and the graphs
        self._pool: Any = None  # one memory pool for every graph: they replay one at a time

    def cross_keys_values(self, encoder_hidden: torch.Tensor) -> torch.Tensor:
        return self.cached.cross_keys_values(encoder_hidden)

    def step(self, batch: DecodeBatch) -> torch.Tensor:
        """CachedDecoder.step's contract: feed every row its `next_token`, return the states [rows, d_model]."""
        with self._lock:
            column = batch.reserve_column()
            shapes = (
                row_bucket(batch.rows, batch.capacity),
                column_bucket(column + 1, batch.self_kv.shape[4]),
                column_bucket(batch.encoder_columns, batch.cross_kv.shape[4]),
            )
            self.column.fill_(column)  # a scalar written on the device stream: no host round trip
            inputs = (self.column, batch.next_token, batch.start, batch.encoder_length, batch.self_kv, batch.cross_kv)
            if self.capture:
                states = self._replay(shapes, inputs).clone()  # the next replay overwrites the graph's output
            else:
                states = self._fixed_shape(shapes, inputs)
            batch.length = column + 1
            return states[: batch.rows]

    def _fixed_shape(self, shapes: tuple[int, int, int], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """CachedDecoder.run over `shapes` (rows, self-attention columns, encoder columns), each a bucket."""
        rows, self_columns, encoder_columns = shapes
        column, next_token, start, encoder_length, self_kv, cross_kv = inputs
        return self.cached.run(
            rows, column, self_columns, encoder_columns, next_token, start, encoder_length, self_kv, cross_kv
        )

    def _replay(self, shapes: tuple[int, int, int], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # A graph reads the addresses it was captured with: any buffer the batch replaced (growth) is a new key.
        key = (shapes, *((tensor.data_ptr(), tuple(tensor.shape)) for tensor in inputs))
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._capture_graph(shapes, inputs)
            self.graphs[key] = graph
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        graph.graph.replay()
        return graph.states

    def _capture_graph(self, shapes: tuple[int, int, int], inputs: tuple[torch.Tensor, ...]) -> _Graph:
        # Warm up on a side stream first (lazy initialisation, cuBLAS workspaces), as torch's docs ask.
        # The warm-up writes this step's column too: the same values the replay writes again.
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._fixed_shape(shapes, inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another lane's kernels on its own thread do not break this capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            states = self._fixed_shape(shapes, inputs)
        self._pool = self._pool or graph.pool()
        self.captured += 1
        return _Graph(graph, states)
