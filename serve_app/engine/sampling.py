"""Per-row sampling inside one decoding batch (after TGI's HeterogeneousNextTokenChooser).

Every row carries its own temperature, top-k, top-p and random generator, so
requests with different knobs share one forward pass, and a seeded row draws the
same tokens whatever else is in the batch, whenever it joined and whichever rows
finish around it: each row consumes exactly as many random numbers per step as
its own settings call for.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serve_app.engine.requests import SamplingParams

# Below this, logits / temperature can overflow float32 (inf, then NaN probabilities): such rows decode greedily.
MIN_SAMPLING_TEMPERATURE = 1e-30

# Columns per group in top_k's first pass over a wide row.
GROUP_COLUMNS = 256


def row_seed(request_seed: int, sequence_index: int) -> int:
    """The generator seed of the `sequence_index`-th returned sequence of a seeded request."""
    return (request_seed * 1_000_003 + sequence_index) % (2**63)


@dataclass
class RowSampling:
    """How one row picks its next token. `generator` is None for greedy rows."""

    temperature: float
    top_k: int
    top_p: float
    generator: torch.Generator | None

    @classmethod
    def for_sequence(cls, params: SamplingParams, sequence_index: int, device: torch.device) -> RowSampling:
        """The sampler of one returned sequence: seeded from the request's seed, else from the OS."""
        # A temperature so small that logits / temperature would overflow float32 is greedy in all but name.
        if params.temperature < MIN_SAMPLING_TEMPERATURE:
            return cls(0.0, params.top_k, params.top_p, None)
        generator = torch.Generator(device=device)
        seed = secrets.randbits(63) if params.seed is None else row_seed(params.seed, sequence_index)
        generator.manual_seed(seed)
        return cls(float(params.temperature), params.top_k, params.top_p, generator)

    @property
    def greedy(self) -> bool:
        return self.generator is None


@torch.inference_mode()
def sample_next_tokens(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """logits [rows, vocab] -> next token ids [rows], each row by its own RowSampling.

    Selection (argmax, top-k) runs on the logits as the model produced them: casting to float32 is
    exact and keeps the order, so it only needs to happen to the values that are kept."""
    count, vocab = logits.shape
    sampled = [row for row, sampling in enumerate(rows) if not sampling.greedy]
    if not sampled:
        return logits.argmax(dim=-1)
    next_tokens = torch.zeros(count, dtype=torch.long, device=logits.device)
    greedy = [row for row, sampling in enumerate(rows) if sampling.greedy]
    if greedy:  # argmax only where it is the answer: the full-vocabulary pass is not free at 250k columns
        index = torch.tensor(greedy, device=logits.device)
        next_tokens[index] = logits.index_select(0, index).argmax(dim=-1)
    # Rows with top-k need only their k best logits; rows without need the full sort.
    for group in ([r for r in sampled if rows[r].top_k > 0], [r for r in sampled if rows[r].top_k == 0]):
        if not group:
            continue
        group_logits = logits if len(group) == count else logits.index_select(0, torch.tensor(group, device=logits.device))
        next_tokens[torch.tensor(group, device=logits.device)] = _sample(group_logits, [rows[r] for r in group], vocab)
    return next_tokens


def _sample(logits: torch.Tensor, rows: list[RowSampling], vocab: int) -> torch.Tensor:
    device = logits.device
    limits = [min(row.top_k, vocab) if row.top_k > 0 else vocab for row in rows]
    width = max(limits)
    # Select first, then scale only the kept values: dividing by a positive temperature keeps the
    # order, and each kept value is the same quotient a full-vocabulary division would give.
    values, indices = top_k(logits, width)  # sorted, best first
    values = values.float() / torch.tensor([row.temperature for row in rows], device=device)[:, None]
    positions = torch.arange(width, device=device)
    values = values.masked_fill(positions[None, :] >= torch.tensor(limits, device=device)[:, None], float("-inf"))
    probs = torch.softmax(values, dim=-1)
    # Nucleus: drop a token once the tokens before it already hold top_p; the best token always stays.
    before = probs.cumsum(dim=-1) - probs
    top_p = torch.tensor([row.top_p for row in rows], dtype=torch.float32, device=device)
    probs = probs.masked_fill((before >= top_p[:, None]) & (positions[None, :] > 0), 0.0)
    # Gumbel-max with each row's own generator, over exactly the row's own top-k: the draw flips only
    # on a near-tie of the two best perturbed scores, so last-bit float differences (thread counts,
    # batch shapes) almost never change a seeded sample, where inverse-CDF sampling flips whenever u
    # lands near any boundary. The noise goes to the kept tokens in token-id order, not in rank order:
    # two nearly equal logits may swap ranks between batch shapes, and must not swap their noise.
    by_id = indices.masked_fill(positions[None, :] >= torch.tensor(limits, device=device)[:, None], logits.shape[-1]).argsort(dim=-1)
    log_probs = probs.log().gather(1, by_id)
    tokens = indices.gather(1, by_id)
    choices = torch.empty(len(rows), dtype=torch.long, device=device)
    for position, (row, limit) in enumerate(zip(rows, limits)):
        uniform = torch.rand(limit, generator=row.generator, device=device)
        gumbel = -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0 - 1e-7)))
        choices[position] = torch.argmax(log_probs[position, :limit] + gumbel)
    return tokens.gather(1, choices[:, None]).squeeze(1)


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
