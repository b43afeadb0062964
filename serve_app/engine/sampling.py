"""Per-row sampling inside one decoding batch (after TGI's HeterogeneousNextTokenChooser).

Every row carries its own temperature, top-k, top-p and seed, so requests with different
knobs share one forward pass. The parameters live on the device beside the batch's caches
(`RowTensors`, kept by DecodeBatch through merges and drops), and one vectorised pass picks
every row's token: nothing in a step is built from Python lists or read back but the chosen
tokens themselves.

The random part is Gumbel-max with noise that is a hash of (row seed, the row's own step,
token id), computed from integers: it depends on nothing else in the batch (not on the
token's rank in the kept set, not on other rows, not on when the row joined), so a seeded
row draws the same tokens alone or in any batch, and a swap of two near-equal logits at the
top-k edge changes only whether those two tokens are candidates. Gumbel-max flips only on a
near-tie of the two best perturbed scores, so last-bit float differences (thread counts,
batch shapes, kernels) almost never change a seeded sample, where inverse-CDF sampling flips
whenever u lands near any boundary. Selection and the softmax run on float32 values.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serve_app.engine.requests import SamplingParams
from serve_app.engine.vocabulary import ExactLogits, exact_top_k, needs_refining, top_k

# Below this, logits / temperature can overflow float32 (inf, then NaN probabilities): such rows decode greedily.
MIN_SAMPLING_TEMPERATURE = 1e-30

_LOW32 = 0xFFFFFFFF


def row_seed(request_seed: int, sequence_index: int) -> int:
    """The seed of the `sequence_index`-th returned sequence of a seeded request."""
    return (request_seed * 1_000_003 + sequence_index) % (2**63)


@dataclass(frozen=True)
class RowSampling:
    """How one row picks its next token, as the host knows it: what a step plans with."""

    temperature: float  # 0: greedy
    top_k: int  # 0: off
    top_p: float
    seed: int  # 63 bits; unused by greedy rows

    @classmethod
    def for_sequence(cls, params: SamplingParams, sequence_index: int) -> RowSampling:
        """The sampler of one returned sequence: seeded from the request's seed, else from the OS."""
        # A temperature so small that logits / temperature would overflow float32 is greedy in all but name.
        temperature = 0.0 if params.temperature < MIN_SAMPLING_TEMPERATURE else float(params.temperature)
        seed = secrets.randbits(63) if params.seed is None else row_seed(params.seed, sequence_index)
        return cls(temperature, params.top_k, params.top_p, seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RowTensors:
    """The rows' sampling parameters on the device, one entry per row, and each row's own step count."""

    temperature: torch.Tensor  # float32; 1.0 for greedy rows (never divided by)
    top_k: torch.Tensor  # long: candidates kept (the vocabulary when top-k is off)
    top_p: torch.Tensor  # float32
    seed: torch.Tensor  # long, 63 bits
    greedy: torch.Tensor  # bool
    step: torch.Tensor  # long: tokens this row has chosen so far

    FIELDS = ("temperature", "top_k", "top_p", "seed", "greedy", "step")

    @classmethod
    def build(cls, rows: Sequence[RowSampling], vocab: int, device: torch.device) -> RowTensors:
        """Upload `rows`' parameters once, when they join (a prefill): never per step."""
        return cls(
            temperature=torch.tensor([row.temperature or 1.0 for row in rows], dtype=torch.float32, device=device),
            top_k=torch.tensor(
                [min(row.top_k, vocab) if row.top_k > 0 else vocab for row in rows], dtype=torch.long, device=device
            ),
            top_p=torch.tensor([row.top_p for row in rows], dtype=torch.float32, device=device),
            seed=torch.tensor([row.seed for row in rows], dtype=torch.long, device=device),
            greedy=torch.tensor([row.greedy for row in rows], dtype=torch.bool, device=device),
            step=torch.zeros(len(rows), dtype=torch.long, device=device),
        )

    @classmethod
    def zeros(cls, capacity: int, device: torch.device) -> RowTensors:
        """Room for `capacity` rows (a batch's spare rows hold zeros, which no step reads)."""
        dtypes = (torch.float32, torch.long, torch.float32, torch.long, torch.bool, torch.long)
        return cls(*(torch.zeros(capacity, dtype=dtype, device=device) for dtype in dtypes))

    def view(self, rows: int) -> RowTensors:
        return RowTensors(*(getattr(self, name)[:rows] for name in self.FIELDS))


@dataclass(frozen=True)
class StepPlan:
    """What the host knows about a step's rows without asking the device: which passes to run, how wide."""

    any_greedy: bool
    any_sampled: bool
    width: int  # candidates per row in the sampled pass: the largest top-k, or the vocabulary
    nucleus: bool  # some sampled row has top_p < 1

    @classmethod
    def of(cls, rows: Sequence[RowSampling], vocab: int) -> StepPlan:
        sampled = [row for row in rows if not row.greedy]
        width = max((min(row.top_k, vocab) if row.top_k > 0 else vocab for row in sampled), default=1)
        return cls(len(sampled) < len(rows), bool(sampled), width, any(row.top_p < 1.0 for row in sampled))


@torch.inference_mode()
def sample_next_tokens(
    logits: torch.Tensor, plan: StepPlan, rows: RowTensors, exact: ExactLogits | None = None
) -> torch.Tensor:
    """logits [rows, vocab] -> next token ids [rows] on the device, each row by its own parameters.

    `exact`: where the logits are rounded (bfloat16), the step's states and head, so that the columns a row may
    choose are read in float32 (vocabulary.py); rounded logits only choose the candidates."""
    refine = exact is not None and needs_refining(logits)
    count, vocab = logits.shape
    if not plan.any_sampled:
        return _argmax(logits, exact if refine else None)
    if plan.width < vocab:
        values, tokens = exact_top_k(logits, plan.width, exact) if exact and refine else top_k(logits, plan.width)
    else:
        full = exact.full() if exact and refine else logits
        if plan.nucleus:  # top-k off and a nucleus to cut: the only case that orders the whole row
            values, tokens = full.sort(dim=-1, descending=True)
        else:  # top-k off, top-p 1: every token is a candidate, in id order
            values, tokens = full, torch.arange(vocab, device=logits.device).expand(count, vocab)
    positions = torch.arange(values.shape[1], device=logits.device)
    # Dividing by a positive temperature keeps the order: only the kept values are scaled.
    values = values.float() / rows.temperature[:, None]
    values = values.masked_fill(positions[None, :] >= rows.top_k[:, None], float("-inf"))
    log_probs = torch.log_softmax(values, dim=-1)
    if plan.nucleus:  # values are best first here
        # Nucleus: drop a token once the tokens before it already hold top_p; the best token always stays.
        probs = log_probs.exp()
        before = probs.cumsum(dim=-1) - probs
        log_probs = log_probs.masked_fill((before >= rows.top_p[:, None]) & (positions[None, :] > 0), float("-inf"))
    choice = (log_probs + gumbel_noise(rows.seed, rows.step, tokens)).argmax(dim=-1)
    sampled = tokens.gather(1, choice[:, None]).squeeze(1)
    if plan.any_greedy:  # argmax only where some row needs it: the full-vocabulary pass is not free at 250k columns
        sampled = torch.where(rows.greedy, _argmax(logits, exact if refine else None), sampled)
    return sampled


def _argmax(logits: torch.Tensor, exact: ExactLogits | None) -> torch.Tensor:
    """Each row's best column: of the float32 logits where `exact` is given, else of `logits`."""
    if exact is None:
        return logits.argmax(dim=-1)
    return exact_top_k(logits, 1, exact)[1][:, 0]


def gumbel_noise(seed: torch.Tensor, step: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise [rows, candidates] for each (row seed, row step, token id): a pure function of the three."""
    key = _mix32(tokens & _LOW32)
    key = _mix32(key ^ (step[:, None] & _LOW32))
    key = _mix32(key ^ (seed[:, None] & _LOW32))
    key = _mix32(key ^ (seed[:, None] >> 32))
    uniform = ((key >> 8).float() + 0.5) * (1.0 / (1 << 24))  # 24 bits: exact in float32, strictly inside (0, 1)
    return -torch.log(-torch.log(uniform))


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding values below 2^32."""
    x = x ^ (x >> 16)
    x = _times(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _times(x, 0x846CA68B)
    return x ^ (x >> 16)


def _times(x: torch.Tensor, constant: int) -> torch.Tensor:
    # x * constant mod 2^32 in two 16-bit halves of the constant: no int64 product overflows.
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _LOW32
