"""The state of a running generation batch: what continuous batching prefills, merges, steps and filters.

Rows live in dim 0 of buffers with spare capacity, so a merge copies only the
incoming rows and a filter moves only the rows that fill the holes finished rows
leave: the running batch is never copied whole on the hot path (at mT5-base
shapes its key/value buffers are hundreds of MB, about as much memory traffic as
a decoding step itself).

Self-attention keys/values share one time axis: at each step every live row
writes column `length`; a row that joined at column s masks the columns before s.
T5's attention depends only on key - query distances, which this left padding
keeps, so a row decodes exactly as it would alone. Encoder states are padded on
the right and masked per row.
"""

from __future__ import annotations

from collections.abc import Hashable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import torch

from serve_app.engine.sampling import RowSampling, RowTensors, StepPlan

# Initial self-attention columns; the time axis grows by doubling or is compacted (see reserve_column).
INITIAL_COLUMNS = 64


@dataclass(frozen=True)
class RowOwner:
    """Which request a row belongs to: the caller's key and the index of the returned sequence."""

    key: Hashable
    sequence: int


@dataclass(frozen=True)
class FinishedRow:
    owner: RowOwner
    token_ids: list[int]  # generated ids, without </s>


@dataclass(frozen=True)
class BatchShape:
    """The model dimensions a batch's buffers are laid out for."""

    layers: int
    heads: int
    head_dim: int
    d_model: int
    dtype: torch.dtype
    device: torch.device
    vocab: int


def self_columns_bound(max_new_tokens: int) -> int:
    """The widest self-attention buffer a batch needs when no row decodes more than `max_new_tokens`: twice the
    smallest INITIAL_COLUMNS x 2^k holding them. A row still decoding when the axis fills it started fewer than
    max_new_tokens columns before its end, so at least half the columns lie before every live row's start and
    reserve_column compacts instead of doubling (tested under a stream of late joiners)."""
    columns = INITIAL_COLUMNS
    while columns < max_new_tokens:
        columns *= 2
    return 2 * columns


def grown_size(current: int, needed: int, limit: int | None) -> int:
    """A buffer's new size for `needed` entries: unchanged when it holds them, else doubled (so a long run grows a
    few times, not at every step), but never past `limit` unless `needed` itself is."""
    if needed <= current:
        return current
    size = max(needed, 2 * current)
    return size if limit is None else max(needed, min(size, limit))


class DecodeBatch:
    """Rows being decoded: key/value caches, per-row sampling and limits, and the row -> request map.

    Row r (0 <= r < rows) holds: the token it feeds at the next step (`next_token`: the decoder
    start token for a row that has not run yet), its first self-attention column (`start`), its
    encoder length, its sampling parameters (on the host for planning, on the device for the
    step: `row_tensors`), its token limit, the ids generated so far and its owner. What a step
    needs on the host (encoder lengths, limits, outputs) is mirrored there, so a step reads back
    from the device only the tokens it chose.
    """

    @torch.inference_mode()
    def __init__(
        self,
        shape: BatchShape,
        capacity: int = 8,
        encoder_columns: int = 1,
        self_columns: int = INITIAL_COLUMNS,
        row_limit: int | None = None,
        encoder_limit: int | None = None,
    ) -> None:
        self.shape = shape
        # Growth doubles (a few copies over a long run) but never past these unless one merge needs more: the rows
        # a scheduler lane's memory holds (engine/memory.py) and the longest input the engine accepts.
        self.row_limit = row_limit
        self.encoder_limit = encoder_limit
        self.rows = 0
        self.length = 0  # self-attention columns written so far (shared time axis)
        self.self_kv = self._zeros_kv(capacity, self_columns)
        self.cross_kv = self._zeros_kv(capacity, encoder_columns)
        self.next_token = torch.zeros(capacity, dtype=torch.long, device=shape.device)
        self.start = torch.zeros(capacity, dtype=torch.long, device=shape.device)
        self.encoder_length = torch.zeros(capacity, dtype=torch.long, device=shape.device)
        self.row_tensors = RowTensors.zeros(capacity, shape.device)
        self.encoder_lengths: list[int] = []  # host mirror of encoder_length[:rows]
        self.owners: list[RowOwner] = []
        self.sampling: list[RowSampling] = []
        self.max_new_tokens: list[int] = []
        self.outputs: list[list[int]] = []

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.rows

    @property
    def capacity(self) -> int:
        return self.self_kv.shape[2]

    @property
    def encoder_columns(self) -> int:
        """Encoder columns any live row uses (attention never reads past them)."""
        return max(self.encoder_lengths, default=0)

    def step_plan(self) -> StepPlan:
        return StepPlan.of(self.sampling, self.shape.vocab)

    def step_rows(self) -> RowTensors:
        """The live rows' sampling parameters on the device."""
        return self.row_tensors.view(self.rows)

    def keys(self) -> set[Hashable]:
        return {owner.key for owner in self.owners}

    def rows_of(self, keys: AbstractSet[Hashable]) -> list[int]:
        return [row for row, owner in enumerate(self.owners) if owner.key in keys]

    # -------------------------------------------------------------- building
    @classmethod
    def from_prefill(
        cls,
        shape: BatchShape,
        cross_kv: torch.Tensor,
        encoder_length: torch.Tensor,
        start_token: int,
        owners: list[RowOwner],
        sampling: list[RowSampling],
        max_new_tokens: list[int],
    ) -> DecodeBatch:
        """Fresh rows that have not decoded yet: `cross_kv` [layers, 2, rows, heads, encoder, head_dim], which the batch
        takes as is.

        No self-attention columns yet: the first step reserves them. A scheduler merges these rows
        into its running batch at once, so allocating (and zero-filling) them here would be waste.
        """
        rows = cross_kv.shape[2]
        batch = cls(shape, capacity=rows, encoder_columns=0, self_columns=0)
        batch.cross_kv = cross_kv.contiguous()
        batch.encoder_length[:rows] = encoder_length
        batch.encoder_lengths = encoder_length.tolist()
        batch.row_tensors = RowTensors.build(sampling, shape.vocab, shape.device)
        batch.next_token[:rows] = start_token
        batch.rows = rows
        batch.owners, batch.sampling, batch.max_new_tokens = list(owners), list(sampling), list(max_new_tokens)
        batch.outputs = [[] for _ in range(rows)]
        return batch

    @torch.inference_mode()
    def merge(self, other: DecodeBatch) -> None:
        """Append `other`'s rows (which it gives up). Time axes align on their last column."""
        if other.rows == 0:
            return
        if self.rows == 0:
            self.length = 0
        if other.length > self.length:  # rare: a batch that already decoded longer joins; shift ours right
            self._shift_columns(other.length - self.length)
        offset = self.length - other.length
        first, end = self.rows, self.rows + other.rows
        encoder = other.encoder_columns
        self._reserve(rows=end, columns=max(self.length, 1), encoder_columns=encoder)
        if other.length:
            self.self_kv[:, :, first:end, :, offset : self.length] = other.self_kv[
                :, :, : other.rows, :, : other.length
            ]
        self.cross_kv[:, :, first:end, :, :encoder] = other.cross_kv[:, :, : other.rows, :, :encoder]
        self.next_token[first:end] = other.next_token[: other.rows]
        self.start[first:end] = other.start[: other.rows] + offset
        self.encoder_length[first:end] = other.encoder_length[: other.rows]
        for ours, theirs in zip(self._row_tensor_list(), other._row_tensor_list(), strict=True):
            ours[first:end] = theirs[: other.rows]
        self.encoder_lengths += other.encoder_lengths
        self.owners += other.owners
        self.sampling += other.sampling
        self.max_new_tokens += other.max_new_tokens
        self.outputs += other.outputs
        self.rows = end
        other._clear()

    @torch.inference_mode()
    def drop(self, rows: list[int]) -> None:
        """Remove `rows`; the last live rows move into the holes they leave (the order of rows is not kept)."""
        if not rows:
            return
        dropped = set(rows)
        remaining = self.rows - len(dropped)
        holes = sorted(row for row in dropped if row < remaining)
        movers = [row for row in range(remaining, self.rows) if row not in dropped]
        if holes:
            # One upload for both index lists.
            source, target = torch.tensor([movers, holes], device=self.shape.device)
            encoder = self.encoder_columns
            self.self_kv[:, :, target, :, : self.length] = self.self_kv[:, :, source, :, : self.length]
            self.cross_kv[:, :, target, :, :encoder] = self.cross_kv[:, :, source, :, :encoder]
            for tensor in (self.next_token, self.start, self.encoder_length, *self._row_tensor_list()):
                tensor[target] = tensor[source]
            for items in self._row_lists():
                for hole, mover in zip(holes, movers, strict=True):
                    items[hole] = items[mover]
        for items in self._row_lists():
            del items[remaining:]
        self.rows = remaining
        if remaining == 0:
            self.length = 0

    # ---------------------------------------------------------- time axis
    def reserve_column(self) -> int:
        """Make room for one more self-attention column and return its index.

        At each power of two from INITIAL_COLUMNS on (where a graphed step's column bucket doubles) and whenever
        the buffer is full: if at least half the columns lie before every live row's start (rows that joined late
        in a long stream), shift them out; a full buffer that cannot be compacted doubles. So the axis stays
        within twice its rows' longest span rounded up to a power of two, however wide the buffer is (grown by an
        earlier long request, or preallocated for graphs), and a full buffer doubles at most up to
        self_columns_bound(max_new_tokens).
        """
        length = self.length
        full = length == self.self_kv.shape[4]
        if full or (length >= INITIAL_COLUMNS and length & (length - 1) == 0):
            first_used = int(self.start[: self.rows].min()) if self.rows else length
            if first_used * 2 >= length and first_used > 0:
                self._compact(first_used)
            elif full:
                self._reserve(rows=self.rows, columns=max(INITIAL_COLUMNS, 2 * length), encoder_columns=0)
        return self.length

    def _compact(self, first_used: int) -> None:
        kept = self.length - first_used
        live = self.self_kv[:, :, : self.rows, :, first_used : self.length].clone()
        self.self_kv[:, :, : self.rows, :, :kept] = live
        self.start[: self.rows] -= first_used
        self.length = kept

    def _shift_columns(self, shift: int) -> None:
        self._reserve(rows=self.rows, columns=self.length + shift, encoder_columns=0)
        live = self.self_kv[:, :, : self.rows, :, : self.length].clone()
        self.self_kv[:, :, : self.rows, :, shift : shift + self.length] = live
        self.start[: self.rows] += shift
        self.length += shift

    # ------------------------------------------------------------- storage
    def _zeros_kv(self, rows: int, columns: int) -> torch.Tensor:
        # Zeros, not empty: masked positions are multiplied by 0 after softmax, and 0 * NaN would poison a row.
        s = self.shape
        return torch.zeros((s.layers, 2, rows, s.heads, columns, s.head_dim), dtype=s.dtype, device=s.device)

    def _reserve(self, rows: int, columns: int, encoder_columns: int) -> None:
        """Grow the buffers (by doubling, within row_limit and encoder_limit) until they hold `rows` rows, `columns`
        self and `encoder_columns` cross columns."""
        capacity = grown_size(self.capacity, rows, self.row_limit)
        self_columns = grown_size(self.self_kv.shape[4], columns, None)
        cross_columns = grown_size(self.cross_kv.shape[4], encoder_columns, self.encoder_limit)
        if capacity != self.capacity or self_columns != self.self_kv.shape[4]:
            grown = self._zeros_kv(capacity, self_columns)
            grown[:, :, : self.rows, :, : self.length] = self.self_kv[:, :, : self.rows, :, : self.length]
            self.self_kv = grown
        if capacity != self.cross_kv.shape[2] or cross_columns != self.cross_kv.shape[4]:
            grown = self._zeros_kv(capacity, cross_columns)
            used = self.encoder_columns
            grown[:, :, : self.rows, :, :used] = self.cross_kv[:, :, : self.rows, :, :used]
            self.cross_kv = grown
        if capacity != self.next_token.shape[0]:
            for name in ("next_token", "start", "encoder_length"):
                setattr(self, name, self._grown(getattr(self, name), capacity))
            self.row_tensors = RowTensors(*(self._grown(tensor, capacity) for tensor in self._row_tensor_list()))

    def _grown(self, old: torch.Tensor, capacity: int) -> torch.Tensor:
        grown = torch.zeros(capacity, dtype=old.dtype, device=old.device)
        grown[: self.rows] = old[: self.rows]
        return grown

    def _row_tensor_list(self) -> list[torch.Tensor]:
        return [getattr(self.row_tensors, name) for name in RowTensors.FIELDS]

    def _row_lists(self) -> tuple[list[Any], ...]:
        """The host-side per-row lists, kept in the rows' order."""
        return (self.owners, self.sampling, self.max_new_tokens, self.outputs, self.encoder_lengths)

    def _clear(self) -> None:
        self.rows = 0
        self.length = 0
        self.owners, self.sampling, self.max_new_tokens, self.outputs, self.encoder_lengths = [], [], [], [], []
