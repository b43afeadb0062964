"""Label scoring: each candidate's log-likelihood, teacher-forced, in one decoder pass per batch.

score(label) = the sum, over the label's tokens and the closing </s>, of the log-probability
the model gives that token after the decoder start token and the label's earlier tokens.

Packing: all candidate labels of an input share one decoder row, laid out as a prefix tree
over their token ids: the start token, then each distinct (prefix, token) once, so labels
that begin alike share their first positions and the states that predict what follows.
A token attends to the start token and to its own ancestors in the tree only, at the
relative positions it would have alone (start 0, its tokens 1..n), so each label is scored
exactly as if decoded alone; cross-attention has no positions, so sharing a row changes
nothing there. A label set wider than one row spills into further rows of the same input.

Normalisation (per request):
- "vocabulary" (default): over the full vocabulary, the model's own likelihood of writing
  the label. The 250k-column projection runs only at the distinct states that predict a
  label token (the start state once per row, then one per label token), in float32 whatever the
  weights' format, block by block (vocabulary.py).
- "label_tokens": over the tokens that occur in the request's labels (plus </s>): faster,
  a different quantity (README, "How classification scores a label").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import MT5ForConditionalGeneration

from serve_app.engine.attention import padded_keys
from serve_app.engine.decoder import relative_attention
from serve_app.engine.vocabulary import log_probs, weight_rows

Normalization = Literal["vocabulary", "label_tokens"]
NORMALIZATIONS: tuple[str, ...] = ("vocabulary", "label_tokens")
# Packed rows build [rows, heads, width, width] attention biases; wider label sets spill into more rows.
MAX_PACKED_WIDTH = 256


@dataclass
class PackedRows:
    """Decoder rows holding label tokens, and every (state, next token) pair a score sums over."""

    tokens: list[list[int]] = field(default_factory=list)  # per row: start token, then one token per tree node
    positions: list[list[int]] = field(default_factory=list)  # each token's position within its label (its depth)
    parents: list[list[int]] = field(
        default_factory=list
    )  # each slot's parent slot in the tree; -1 for the start token
    row_request: list[int] = field(default_factory=list)  # the request (encoder input) each row reads
    # One entry per scored token: the row and position of the state that predicts it, the token,
    # and the label (global index over the batch, in request order) whose score it adds to.
    target_row: list[int] = field(default_factory=list)
    target_position: list[int] = field(default_factory=list)
    target_token: list[int] = field(default_factory=list)
    target_label: list[int] = field(default_factory=list)
    labels: int = 0

    @property
    def width(self) -> int:
        return max(len(row) for row in self.tokens)

    def new_row(self, request: int, start_id: int) -> int:
        self.tokens.append([start_id])
        self.positions.append([0])
        self.parents.append([-1])
        self.row_request.append(request)
        return len(self.tokens) - 1


def pack_rows(
    label_sets: list[list[list[int]]],
    start_id: int,
    eos_id: int,
    packed: bool = True,
    max_width: int = MAX_PACKED_WIDTH,
) -> PackedRows:
    """Lay out every request's labels in decoder rows: a prefix tree per row (`packed`), or one row per label."""
    out = PackedRows()
    for request, labels in enumerate(label_sets):
        row = -1
        children: dict[tuple[int, int], int] = {}  # (parent slot, token) -> slot, in the current row
        for label in labels:
            shared = _shared_prefix(children, label) if row >= 0 and packed else 0
            if row < 0 or not packed or len(out.tokens[row]) + len(label) - shared > max_width:
                row, children = out.new_row(request, start_id), {}
            slot = 0
            path = []
            for depth, token in enumerate(label, start=1):
                child = children.get((slot, token))
                if child is None:
                    child = len(out.tokens[row])
                    out.tokens[row].append(token)
                    out.positions[row].append(depth)
                    out.parents[row].append(slot)
                    children[(slot, token)] = child
                slot = child
                path.append(slot)
            # The start state predicts the first token, the state at token i the token i+1, the last one </s>.
            out.target_row += [row] * (len(label) + 1)
            out.target_position += [0, *path]
            out.target_token += [*label, eos_id]
            out.target_label += [out.labels] * (len(label) + 1)
            out.labels += 1
    return out


def _shared_prefix(children: dict[tuple[int, int], int], label: list[int]) -> int:
    """How many of `label`'s first tokens the row's tree already holds."""
    slot, shared = 0, 0
    for token in label:
        slot = children.get((slot, token), -1)
        if slot < 0:
            break
        shared += 1
    return shared


def _ancestry(rows: PackedRows, width: int) -> torch.Tensor:
    """visible[row, query, key]: key is the start token, the query itself or one of its ancestors."""
    visible = torch.zeros((len(rows.tokens), width, width), dtype=torch.bool)
    visible[:, :, 0] = True
    for row, parents in enumerate(rows.parents):
        for slot in range(1, len(parents)):
            ancestor = slot
            while ancestor > 0:
                visible[row, slot, ancestor] = True
                ancestor = parents[ancestor]
    return visible


def decode_rows(
    model: MT5ForConditionalGeneration, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor, rows: PackedRows
) -> torch.Tensor:
    """Decoder states [rows, width, d_model] of the packed rows (teacher-forced, one pass)."""
    device = encoder_hidden.device
    # Positions padded like attention's keys: float32's matmuls round a row's tail positions by how many there are.
    count, width = len(rows.tokens), padded_keys(rows.width)
    tokens = torch.zeros((count, width), dtype=torch.long)
    positions = torch.zeros((count, width), dtype=torch.long)
    for row, (row_tokens, row_positions) in enumerate(zip(rows.tokens, rows.positions, strict=True)):
        tokens[row, : len(row_tokens)] = torch.tensor(row_tokens)
        positions[row, : len(row_positions)] = torch.tensor(row_positions)
    row_request = torch.tensor(rows.row_request, device=device)
    if len(rows.row_request) != encoder_hidden.shape[0] or rows.row_request != list(range(count)):
        encoder_hidden, encoder_mask = (
            encoder_hidden.index_select(0, row_request),
            encoder_mask.index_select(0, row_request),
        )

    decoder: Any = model.decoder
    attention = relative_attention(model)
    relative = positions[:, None, :] - positions[:, :, None]  # [rows, query, key]: key - query
    buckets = attention._relative_position_bucket(
        relative,
        bidirectional=False,
        num_buckets=attention.relative_attention_num_buckets,
        max_distance=attention.relative_attention_max_distance,
    )
    visible = _ancestry(rows, width)
    dtype = encoder_hidden.dtype
    lowest = torch.finfo(dtype).min
    bias = attention.relative_attention_bias(buckets.to(device)).permute(0, 3, 1, 2).to(dtype)
    self_bias = torch.where(visible.to(device)[:, None], bias, torch.tensor(lowest, dtype=dtype, device=device))
    cross_bias = torch.zeros(encoder_mask.shape, dtype=dtype, device=device).masked_fill(encoder_mask == 0, lowest)[
        :, None, None, :
    ]

    states = decoder.embed_tokens(tokens.to(device))
    for block in decoder.block:
        states = block(states, None, self_bias, encoder_hidden, None, cross_bias, cache=None)[0]
    out: torch.Tensor = decoder.final_layer_norm(states)
    return out


def target_log_probs(
    head: torch.nn.Module, states: torch.Tensor, rows: PackedRows, normalizations: list[str], eos_id: int
) -> torch.Tensor:
    """log p(token | state) for every target, float32, normalised per request as `normalizations` says.

    `head` is the model's lm_head (an OutputHead, a plain Linear, or an Int8Linear)."""
    device = states.device
    width = states.shape[1]
    flat = states.reshape(-1, states.shape[-1])
    state_of_target = torch.tensor(rows.target_row, device=device) * width + torch.tensor(
        rows.target_position, device=device
    )
    used, target_state = torch.unique(state_of_target, return_inverse=True)  # each distinct state once
    used_states = flat.index_select(0, used)
    tokens = torch.tensor(rows.target_token, device=device)
    row_of_state = used // width
    by_vocabulary = torch.tensor(
        [normalizations[request] == "vocabulary" for request in rows.row_request], device=device
    )
    state_by_vocabulary = by_vocabulary.index_select(0, row_of_state)
    out = torch.empty(tokens.numel(), dtype=torch.float32, device=device)
    full = state_by_vocabulary.nonzero().squeeze(1)
    if full.numel():
        _vocabulary_log_probs(head, used_states, full, target_state, tokens, out)
    restricted = (~state_by_vocabulary).nonzero().squeeze(1)
    if restricted.numel():
        request_of_state = torch.tensor(rows.row_request, device=device).index_select(0, row_of_state)
        _label_token_log_probs(head, used_states, restricted, request_of_state, target_state, tokens, rows, eos_id, out)
    return out


def _vocabulary_log_probs(
    head: nn.Module,
    states: torch.Tensor,
    which: torch.Tensor,
    target_state: torch.Tensor,
    tokens: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Fill `out` for the targets predicted by states `which`, normalised over the full vocabulary in float32
    (vocabulary.log_probs: blocked, whatever the weights' format)."""
    local = torch.full((states.shape[0],), -1, dtype=torch.long, device=states.device)
    local[which] = torch.arange(which.numel(), device=states.device)
    targets = (local.index_select(0, target_state) >= 0).nonzero().squeeze(1)
    at = local.index_select(0, target_state.index_select(0, targets))
    out[targets] = log_probs(head, states.index_select(0, which), at, tokens.index_select(0, targets))


def _label_token_log_probs(
    head: nn.Module,
    states: torch.Tensor,
    which: torch.Tensor,
    request_of_state: torch.Tensor,
    target_state: torch.Tensor,
    tokens: torch.Tensor,
    rows: PackedRows,
    eos_id: int,
    out: torch.Tensor,
) -> None:
    """Fill `out` for the targets predicted by states `which`, normalised over their request's label tokens."""
    device = states.device
    allowed_by_request: dict[int, set[int]] = {}
    for row, token in zip(rows.target_row, rows.target_token, strict=True):
        allowed_by_request.setdefault(rows.row_request[row], {eos_id}).add(token)
    columns = sorted(set().union(*allowed_by_request.values()))
    column_of = torch.full((max(columns) + 1,), -1, dtype=torch.long)
    column_of[columns] = torch.arange(len(columns))
    allowed = torch.zeros((max(allowed_by_request) + 1, len(columns)), dtype=torch.bool)
    for request, request_tokens in allowed_by_request.items():
        allowed[request, column_of[sorted(request_tokens)]] = True
    rows_of_head = weight_rows(head, torch.tensor(columns, device=device))
    # A few columns: their dot products in float32 outright.
    logits = states.index_select(0, which).float() @ rows_of_head.T
    logits = logits.masked_fill(
        ~allowed.to(device).index_select(0, request_of_state.index_select(0, which)), float("-inf")
    )
    normaliser = torch.logsumexp(logits, dim=-1)
    local = torch.full((states.shape[0],), -1, dtype=torch.long, device=device)
    local[which] = torch.arange(which.numel(), device=device)
    targets = (local.index_select(0, target_state) >= 0).nonzero().squeeze(1)
    at = local.index_select(0, target_state.index_select(0, targets))
    target_columns = column_of.to(device).index_select(0, tokens.index_select(0, targets))
    out[targets] = logits[at, target_columns] - normaliser.index_select(0, at)
