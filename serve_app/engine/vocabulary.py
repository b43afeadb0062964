"""The vocabulary projection in float32, whatever the weights' format: the log-probabilities a label score sums,
and the logits sampling reads.

A bfloat16 matmul accumulates in float32 but rounds its output to bfloat16's 8-bit mantissa: at |logit| 16-32 the
spacing is 0.125, so rounding alone would move a label's log-probability by up to ±0.06. On the weights as
stored (no float32 copy of the 250,112 x 768 projection), two ways around it:

- scoring (`log_probs`) needs every column, for the normaliser: each block of the head gives its float32 logits
  (OutputHead.exact_block_logits: the rounded product plus its own rounding error, from a second matmul that
  accumulates it in float32), reduced right away to the block's maximum and sum of exponentials, so no state
  ever holds 250k float32 logits and the reduction reads them while they are in cache; the targets' logits are
  picked from the same blocks.
- sampling (`ExactLogits`) needs only the few columns a row can choose: the top-k its sampler keeps, the argmax of
  a greedy row. The rounded logits choose candidates with a margin their rounding cannot cross; those columns
  alone are computed again in float32 from their own rows of the weight. A row whose candidates the margin
  cannot settle, and a row with top-k off, gets every column in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from serve_app.engine.int8_linear import Int8Linear
from serve_app.engine.output_head import LOW_PRECISION, OutputHead

# States per chunk of the normaliser: a chunk's float32 block of logits (64 x 8192) is 2 MiB.
STATE_CHUNK = 64
# bfloat16 rounds to nearest: |rounded - exact| <= 2^-8 |exact|. Twice that, plus an absolute term for the float32
# accumulation of a logit near 0, bounds how far a rounded logit lies from the float32 one.
RELATIVE_MARGIN = 2.0**-7
ABSOLUTE_MARGIN = 1e-3
# Columns per group in top_k's first pass over a wide row.
GROUP_COLUMNS = 256
# Candidates first taken per row, as a multiple of the columns it keeps (plus a few): rounded logits tie in
# runs at bfloat16's spacing, so the k-th value's neighbours come along.
CANDIDATE_FACTOR = 2
CANDIDATE_EXTRA = 32


class Projection(Protocol):
    """What the normaliser needs of lm_head: column blocks, and float32 logits per block."""

    ranges: list[tuple[int, int]]

    def exact_block_logits(self, states: torch.Tensor, block: int) -> torch.Tensor: ...


class WholeProjection:
    """A head without blocks (an int8 linear layer, whose output is float32 already): one block."""

    def __init__(self, head: nn.Module, vocab: int) -> None:
        self.head = head
        self.ranges = [(0, vocab)]

    def exact_block_logits(self, states: torch.Tensor, block: int) -> torch.Tensor:
        logits: torch.Tensor = self.head(states)
        return logits.float()


def projection_of(head: nn.Module) -> Projection:
    """lm_head as a Projection: an OutputHead as it is; a plain Linear viewed as one (no copy); else whole."""
    if isinstance(head, OutputHead):
        return head
    weight = getattr(head, "weight", None)
    if isinstance(head, nn.Linear) and isinstance(weight, torch.Tensor):
        return OutputHead(weight, "linear")
    return WholeProjection(head, int(getattr(head, "out_features", 0)))


def log_probs(
    head: nn.Module, states: torch.Tensor, target_state: torch.Tensor, target_token: torch.Tensor
) -> torch.Tensor:
    """log p(target_token[i] | states[target_state[i]]) over the full vocabulary, float32 [targets]."""
    projection = projection_of(head)
    device = states.device
    normaliser = torch.empty(states.shape[0], dtype=torch.float32, device=device)
    picked = torch.empty(target_token.shape[0], dtype=torch.float32, device=device)
    block_of_target = torch.bucketize(
        target_token, torch.tensor([stop for _, stop in projection.ranges], device=device), right=True
    )
    for first in range(0, states.shape[0], STATE_CHUNK):
        chunk = states[first : first + STATE_CHUNK]
        in_chunk = (target_state >= first) & (target_state < first + chunk.shape[0])
        maxima = torch.full((chunk.shape[0],), float("-inf"), dtype=torch.float32, device=device)
        sums = torch.zeros(chunk.shape[0], dtype=torch.float32, device=device)
        for block, (column, _) in enumerate(projection.ranges):
            logits = projection.exact_block_logits(chunk, block)
            targets = (in_chunk & (block_of_target == block)).nonzero().squeeze(1)
            if targets.numel():
                picked[targets] = logits[target_state[targets] - first, target_token[targets] - column]
            new_maxima = torch.maximum(maxima, logits.amax(dim=-1))
            block_sums = logits.sub_(new_maxima[:, None]).exp_().sum(dim=-1)
            sums = sums.mul_(torch.exp(maxima - new_maxima)).add_(block_sums)
            maxima = new_maxima
        normaliser[first : first + chunk.shape[0]] = maxima + torch.log(sums)
    return picked - normaliser.index_select(0, target_state)


@dataclass
class ExactLogits:
    """float32 logits of a step's states, computed only where sampling asks (the columns it may choose)."""

    head: nn.Module
    states: torch.Tensor  # [rows, d_model]

    def at(self, tokens: torch.Tensor) -> torch.Tensor:
        """float32 logits [rows, n] of each row's own columns tokens [rows, n]: their weight rows, dotted in float32."""
        rows_of_weight = weight_rows(self.head, tokens.reshape(-1)).view(*tokens.shape, -1)
        return torch.einsum("rnd,rd->rn", rows_of_weight, self.states.float())

    def full(self) -> torch.Tensor:
        """float32 logits [rows, vocab] of every column."""
        projection = projection_of(self.head)
        states = self.states
        return torch.cat([projection.exact_block_logits(states, b) for b in range(len(projection.ranges))], dim=1)


def weight_rows(head: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """lm_head's weight rows of `tokens`, float32 [len(tokens), d_model], whatever the head's format."""
    if isinstance(head, Int8Linear):
        return head.dequantised_rows(tokens)
    weight = head.weight
    assert isinstance(weight, torch.Tensor)
    return weight.index_select(0, tokens).float()


def margin(values: torch.Tensor) -> torch.Tensor:
    """How far a rounded logit may lie from the float32 one."""
    return values.abs() * RELATIVE_MARGIN + ABSOLUTE_MARGIN


def needs_refining(logits: torch.Tensor) -> bool:
    return logits.dtype in LOW_PRECISION


def exact_top_k(
    logits: torch.Tensor,
    k: int,
    exact: ExactLogits,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest float32 logits of each row and their columns, best first, from rounded logits [rows, vocab].

    Candidates are the rounded top-`width`; a column outside them has a rounded value at most the last candidate's,
    so its float32 logit is at most that value plus its margin. Where that bound lies below the k-th candidate's
    own lower bound, no outside column can be in the row's float32 top-k; rows where it does not (a run of
    near-equal logits) take more candidates, then every column."""
    rows, vocab = logits.shape
    width = min(vocab, CANDIDATE_FACTOR * k + CANDIDATE_EXTRA)
    while True:
        rounded, columns = top_k(logits, width)
        rounded = rounded.float()
        if width == vocab:
            settled = torch.ones(rows, dtype=torch.bool, device=logits.device)
        else:
            kth, last = rounded[:, k - 1], rounded[:, -1]
            settled = (last + margin(last)) < (kth - margin(kth))
        if bool(settled.all()) or width == vocab:
            break
        width = min(vocab, width * 8)
    if width == vocab:
        values = exact.full()
        best, picked = values.topk(k, dim=-1)
        return best, picked
    values = exact.at(columns)
    best, order = values.topk(k, dim=-1)
    return best, columns.gather(1, order)


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each row of logits [rows, vocab] and their columns, best first.

    The same values as `logits.topk(k)` (among equal values either may pick other columns), in far
    less time when k is far below the vocabulary (a full top-k over 250,112 columns per row is a
    visible share of a decoding step). A row's k best values lie in the k groups of
    GROUP_COLUMNS columns whose maxima are largest (any other group's values are each at most those
    k maxima), so one max per group, a top-k over the maxima and a top-k over the chosen groups'
    columns replace the top-k over the whole row. Each row is chosen from its own values alone.
    """
    rows, vocab = logits.shape
    groups = vocab // GROUP_COLUMNS
    if 4 * k * GROUP_COLUMNS > vocab:  # the chosen groups would cover a large part of the row: no gain
        return logits.topk(k, dim=-1)
    logits = logits.contiguous()
    grouped = logits.as_strided((rows, groups, GROUP_COLUMNS), (vocab, GROUP_COLUMNS, 1))
    best_groups = grouped.amax(dim=-1).topk(k, dim=-1).indices  # [rows, k]
    offsets = torch.arange(GROUP_COLUMNS, device=logits.device)
    columns = (best_groups[:, :, None] * GROUP_COLUMNS + offsets).reshape(rows, k * GROUP_COLUMNS)
    if groups * GROUP_COLUMNS < vocab:  # the last columns, fewer than a group, are always candidates
        tail = torch.arange(groups * GROUP_COLUMNS, vocab, device=logits.device)
        columns = torch.cat([columns, tail.expand(rows, -1)], dim=1)
    values, picked = logits.gather(1, columns).topk(k, dim=-1)
    return values, columns.gather(1, picked)
