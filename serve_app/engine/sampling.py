"""Per-row sampling inside one decoding batch (after TGI's HeterogeneousNextTokenChooser).

Every row carries its own temperature, top-k, top-p and random generator, so
requests with different knobs share one forward pass and a seeded request draws
the same tokens whatever else is in the batch.
"""

from __future__ import annotations

import secrets

import torch

from serve_app.engine.requests import SamplingParams


# Below this, logits / temperature can overflow float32 (inf, then NaN probabilities): such rows decode greedily.
MIN_SAMPLING_TEMPERATURE = 1e-30


def row_seed(request_seed: int, sequence_index: int) -> int:
    """The generator seed of the `sequence_index`-th returned sequence of a seeded request."""
    return (request_seed * 1_000_003 + sequence_index) % (2**63)


class RowSampler:
    """Chooses the next token of each row; rows can be dropped as they finish."""

    def __init__(self, row_params: list[SamplingParams], row_seeds: list[int | None], device: torch.device) -> None:
        # A temperature so small that logits / temperature would overflow float32 is greedy in all but name.
        self.temperature = torch.tensor(
            [p.temperature if p.temperature >= MIN_SAMPLING_TEMPERATURE else 0.0 for p in row_params], dtype=torch.float32, device=device
        )
        self.top_k = torch.tensor([p.top_k for p in row_params], dtype=torch.long, device=device)
        self.top_p = torch.tensor([p.top_p for p in row_params], dtype=torch.float32, device=device)
        self.generators: list[torch.Generator | None] = []
        for params, seed in zip(row_params, row_seeds):
            if params.temperature < MIN_SAMPLING_TEMPERATURE:
                self.generators.append(None)
                continue
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else secrets.randbits(63))
            self.generators.append(generator)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices into the current rows), in that order."""
        self.temperature = self.temperature[rows]
        self.top_k = self.top_k[rows]
        self.top_p = self.top_p[rows]
        row_list = rows.tolist()
        self.generators = [self.generators[i] for i in row_list]

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [rows, vocab] -> next token ids [rows]."""
        logits = logits.float()
        sampled = (self.temperature > 0).nonzero().squeeze(1)
        if sampled.numel() == 0:
            return logits.argmax(dim=-1)
        rows = logits.shape[0]
        if sampled.numel() == rows:
            next_tokens = torch.empty(rows, dtype=torch.long, device=logits.device)
        else:  # argmax only where it is the answer: the full-vocabulary pass is not free at 250k columns
            next_tokens = torch.zeros(rows, dtype=torch.long, device=logits.device)
            greedy = (self.temperature <= 0).nonzero().squeeze(1)
            next_tokens[greedy] = logits.index_select(0, greedy).argmax(dim=-1)
        # Rows with top-k need only their k best logits; rows without need the full sort.
        has_top_k = self.top_k[sampled] > 0
        for group in (sampled[has_top_k], sampled[~has_top_k]):
            if group.numel() == rows:  # every row in one group: no copy of the [rows, vocab] logits
                next_tokens = self._sample(logits, group)
            elif group.numel():
                next_tokens[group] = self._sample(logits.index_select(0, group), group)
        return next_tokens

    def _sample(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        top_k = self.top_k[rows]
        width = logits.shape[-1] if bool((top_k == 0).any()) else min(int(top_k.max()), logits.shape[-1])
        # Select first, then scale only the kept values: dividing by a positive temperature keeps the
        # order, and each kept value is the same quotient a full-vocabulary division would give.
        values, indices = logits.topk(width, dim=-1)  # sorted, best first
        values = values / self.temperature[rows, None]
        limit = torch.where(top_k > 0, top_k, width)
        positions = torch.arange(width, device=logits.device)
        values = values.masked_fill(positions[None, :] >= limit[:, None], float("-inf"))
        probs = torch.softmax(values, dim=-1)
        # Nucleus: drop a token once the tokens before it already hold top_p; the best token always stays.
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill((before >= self.top_p[rows, None]) & (positions[None, :] > 0), 0.0)
        # Gumbel-max with each row's own generator: the draw flips only on a near-tie of the two best
        # perturbed scores, so last-bit float differences (thread counts, batch shapes) almost never
        # change a seeded sample, where inverse-CDF sampling flips whenever u lands near any boundary.
        log_probs = probs.log()
        choices = torch.empty(rows.numel(), dtype=torch.long, device=logits.device)
        for position, row in enumerate(rows.tolist()):
            uniform = torch.rand(probs.shape[-1], generator=self.generators[row], device=logits.device)
            gumbel = -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0 - 1e-7)))
            choices[position] = torch.argmax(log_probs[position] + gumbel)
        return indices.gather(1, choices[:, None]).squeeze(1)
