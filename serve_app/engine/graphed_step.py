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

Columns under MIN_COLUMN_BUCKET share one bucket: a batch's first steps and inputs of a few dozen tokens would
otherwise each have buckets of their own (1, 2, 4 ... columns), and the eager step reads a fresh batch's whole
first 64-column buffer once half of it is used anyway (decoder.attended_columns).

`GraphedDecoder` captures one graph per (row bucket, column buckets, buffer addresses and shapes) on CUDA and
replays it. A graph replays fixed addresses, so with graphs on, Seq2SeqEngine.new_batch allocates a batch's
buffers once, for the lane's max_batch_rows (within what its memory holds), the longest input and the widest
time axis (decode_batch.self_columns_bound), and `capture_buckets` captures every bucket those buffers can step
with before the batch takes its first request: the scheduler's batch (which outlives every request) then only
replays. A changed max_batch_rows makes the batch anew once it has drained (scheduler.py); a capture while
serving happens only where buffers moved (a batch replaced after a failed step, one request wider than the
lane). At the GPU profile (256 rows, 512-token inputs, 512 new tokens) that is 9 row x 5 self x 4 encoder
buckets = 180 graphs. A ModelReplica's lanes make their batches for the budgets Serve hands it just after
construction (user_config), and its first reconfigure returns, so Serve marks it running, once they have.
With `capture=False` it runs the same fixed-shape call without graphs: on a CPU (where no graphs
exist) that is how tests check it gives CachedDecoder's answers. Switched on by the
ModelReplica's `decode_graphs` (config.yaml); off until a GPU measures it (`python -m bench gpu`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from serve_app.engine.decode_batch import INITIAL_COLUMNS, DecodeBatch
from serve_app.engine.decoder import CachedDecoder

logger = logging.getLogger(__name__)

# Captured graphs kept (least recently replayed dropped first): two lanes' start-up sets at the GPU profile (180
# each), with room for the graphs of a batch replaced after a failed step before the old ones are dropped.
MAX_GRAPHS = 512
# The fewest columns a step attends over (self-attention and encoder alike).
MIN_COLUMN_BUCKET = INITIAL_COLUMNS


def row_bucket(rows: int, capacity: int) -> int:
    """Rows (or columns) a step computes for `rows` in use: the next power of two, within the buffers' capacity."""
    bucket = 1
    while bucket < rows:
        bucket *= 2
    return min(bucket, capacity)


def column_bucket(columns: int, width: int) -> int:
    """Self-attention or encoder columns a step attends over when `columns` are in use in a buffer `width` wide: the
    next power of two, at least MIN_COLUMN_BUCKET, within the buffer."""
    return row_bucket(max(columns, MIN_COLUMN_BUCKET), width)


def bucket_shapes(capacity: int, self_width: int, encoder_width: int) -> list[tuple[int, int, int]]:
    """Every (rows, self-attention columns, encoder columns) a step of a batch with these buffers can take."""
    rows = sorted({row_bucket(count, capacity) for count in range(1, capacity + 1)})
    self_columns = sorted({column_bucket(count, self_width) for count in range(1, self_width + 1)})
    encoder_columns = sorted({column_bucket(count, encoder_width) for count in range(1, encoder_width + 1)})
    return [(r, s, e) for r in rows for s in self_columns for e in encoder_columns]


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
            inputs = self._inputs(batch)
            if self.capture:
                states = self._replay(shapes, inputs).clone()  # the next replay overwrites the graph's output
            else:
                states = self._fixed_shape(shapes, inputs)
            batch.length = column + 1
            return states[: batch.rows]

    @torch.inference_mode()  # the batch's buffers are inference tensors: a capture writes into them
    def capture_buckets(self, batch: DecodeBatch) -> int:
        """Capture every bucket an empty `batch`'s buffers can step with (bucket_shapes) that is not captured yet;
        returns how many were. The captures write keys and values into the spare rows only: the batch must be empty.
        Without capture (a CPU) there is nothing to do."""
        if not self.capture or not batch.capacity:
            return 0
        if batch.rows:
            raise ValueError(f"capture_buckets needs an empty batch; this one holds {batch.rows} rows")
        started, before = time.monotonic(), self.captured
        shapes = bucket_shapes(batch.capacity, batch.self_kv.shape[4], batch.cross_kv.shape[4])
        with self._lock:
            inputs = self._inputs(batch)
            for bucket in shapes:
                key = _graph_key(bucket, inputs)
                if key not in self.graphs:
                    self.column.fill_(bucket[1] - 1)  # a column the bucket holds; a replay writes its own
                    self.graphs[key] = self._capture_graph(bucket, inputs)
                    self._evict()
        captured = self.captured - before
        logger.info(
            "decode_graphs: captured %d graph(s) for a batch of %d rows, %d self-attention and %d encoder columns "
            "(%d buckets) in %.1f s",
            captured,
            batch.capacity,
            batch.self_kv.shape[4],
            batch.cross_kv.shape[4],
            len(shapes),
            time.monotonic() - started,
        )
        return captured

    def _inputs(self, batch: DecodeBatch) -> tuple[torch.Tensor, ...]:
        """What a graph reads: the column to write, then the batch's buffers (their addresses are in its key)."""
        return (self.column, batch.next_token, batch.start, batch.encoder_length, batch.self_kv, batch.cross_kv)

    def _fixed_shape(self, shapes: tuple[int, int, int], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """CachedDecoder.run over `shapes` (rows, self-attention columns, encoder columns), each a bucket."""
        rows, self_columns, encoder_columns = shapes
        column, next_token, start, encoder_length, self_kv, cross_kv = inputs
        return self.cached.run(
            rows, column, self_columns, encoder_columns, next_token, start, encoder_length, self_kv, cross_kv
        )

    def _replay(self, shapes: tuple[int, int, int], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        key = _graph_key(shapes, inputs)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._capture_graph(shapes, inputs)
            self.graphs[key] = graph
            self._evict()
        else:
            self.graphs.move_to_end(key)
        graph.graph.replay()
        return graph.states

    def _evict(self) -> None:
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)

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


def _graph_key(shapes: tuple[int, int, int], inputs: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
    # A graph reads the addresses it was captured with: any buffer the batch replaced (growth) is a new key.
    return (shapes, *((tensor.data_ptr(), tuple(tensor.shape)) for tensor in inputs))
