"""Generation and label scoring on an mT5 model: tensor work only, no text.

Both run the encoder once per input. Inputs of very different lengths are encoded
in length buckets, so short prompts are not padded to the longest one.
Generation is prefill (encoder and cross-attention projections, once per input)
then steps over a DecodeBatch that requests can join and leave between steps
(decode_batch.py); `generate` is a thin loop over them. Scoring packs the
candidate labels of an input into shared decoder rows (scoring.py).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence

import torch
from transformers import MT5ForConditionalGeneration

from serve_app.engine.decode_batch import DecodeBatch, FinishedRow, RowOwner, self_columns_bound
from serve_app.engine.decoder import CachedDecoder
from serve_app.engine.errors import EngineInputError, ModelSpecError
from serve_app.engine.graphed_step import GraphedDecoder
from serve_app.engine.requests import MAX_NEW_TOKENS, GenerationRequest, ScoringRequest, ScoringResult
from serve_app.engine.sampling import RowSampling, sample_next_tokens
from serve_app.engine.scoring import (
    NORMALIZATIONS,
    decode_rows,
    pack_rows,
    target_log_probs,
)
from serve_app.engine.vocabulary import ExactLogits

DEFAULT_MAX_INPUT_TOKENS = 512


def length_buckets(lengths: list[int], overhead_tokens: int | None) -> list[list[int]]:
    """Split batch rows into groups to encode apart, minimising padded tokens + `overhead_tokens` per group.

    Rows are taken in length order, so a group is a run of similar lengths; an optimal split of
    the sorted lengths is found by dynamic programming. None (or a single row) keeps one group.
    """
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    if overhead_tokens is None or len(order) < 2:
        return [order]
    sorted_lengths = [lengths[row] for row in order]
    count = len(order)
    best = [0.0] + [float("inf")] * count  # best[i]: cost of encoding the i shortest rows
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        for begin in range(end):  # group = sorted rows begin..end-1, padded to sorted_lengths[end-1]
            cost = best[begin] + (end - begin) * sorted_lengths[end - 1] + overhead_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    groups = []
    end = count
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def _token_id(value: int | list[int] | None, name: str) -> int:
    """One special token id from the model's config (mT5 has one of each)."""
    if not isinstance(value, int):
        raise ModelSpecError(f"the model's config.json must give one integer {name}, got {value!r}")
    return value


class Seq2SeqEngine:
    """Runs GenerationRequests and ScoringRequests as padded batches on one model."""

    # Encoding in length buckets: an extra encoder call is worth it when it saves more than this
    # many padded tokens (None: always one padded batch). docs/perf-notes.md, "length buckets for the encoder".
    bucket_overhead_tokens: int | None = 64
    # Scoring: all labels of an input in one packed decoder sequence (False: one decoder row per
    # label, encoder state fanned out to each). docs/perf-notes.md, "packed label scoring".
    packed_scoring: bool = True

    def __init__(
        self,
        model: MT5ForConditionalGeneration,
        max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
        decode_graphs: bool = False,
    ) -> None:
        """`decode_graphs`: decoding steps replay CUDA graphs (graphed_step.py); CUDA only."""
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self.max_input_tokens = max_input_tokens
        self.pad_id = _token_id(self.config.pad_token_id, "pad_token_id")
        self.eos_id = _token_id(self.config.eos_token_id, "eos_token_id")
        self.start_id = _token_id(self.config.decoder_start_token_id, "decoder_start_token_id")
        self.vocab_size = int(model.lm_head.out_features)
        self.decoder: CachedDecoder | GraphedDecoder = CachedDecoder(model)
        if decode_graphs:
            self.decoder = GraphedDecoder(self.decoder)
        self._held_batches = threading.local()  # generate()'s batch per thread, when steps replay graphs

    # ---------------------------------------------------------------- shared
    def check_ids(self, ids: list[int], field: str) -> None:
        """Refuse token ids the model cannot take: empty, longer than the input window, or outside the vocabulary."""
        if not ids:
            raise EngineInputError(field, "must hold at least one token")
        if len(ids) > self.max_input_tokens:
            raise EngineInputError(field, f"must hold at most {self.max_input_tokens} tokens, got {len(ids)}")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise EngineInputError(field, f"token ids must lie in [0, {self.vocab_size})")

    def check_request(self, request: GenerationRequest | ScoringRequest, prefix: str = "") -> None:
        """Refuse a request the engine cannot run, naming the field, before it joins anyone's batch."""
        self.check_ids(request.input_ids, f"{prefix}input_ids")
        if isinstance(request, ScoringRequest):
            if not request.label_ids:
                raise EngineInputError(f"{prefix}label_ids", "needs at least one label")
            for label_index, label in enumerate(request.label_ids):
                self.check_ids(label, f"{prefix}label_ids[{label_index}]")
            if request.normalization not in NORMALIZATIONS:
                raise EngineInputError(f"{prefix}normalization", f"must be one of {', '.join(NORMALIZATIONS)}")

    def _encoder_states(self, inputs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output [batch, longest, d_model] (zeros past each input's end) and its mask [batch, longest]."""
        length = max(len(ids) for ids in inputs)
        mask = torch.zeros((len(inputs), length), dtype=torch.long)
        for row, ids in enumerate(inputs):
            mask[row, : len(ids)] = 1
        mask = mask.to(self.device)
        buckets = length_buckets([len(ids) for ids in inputs], self.bucket_overhead_tokens)
        if len(buckets) == 1:
            return self._run_encoder(inputs, list(range(len(inputs)))), mask
        hidden: torch.Tensor | None = None
        for bucket in buckets:
            states = self._run_encoder(inputs, bucket)
            if hidden is None:
                hidden = states.new_zeros((len(inputs), length, states.shape[-1]))
            hidden[torch.tensor(bucket, device=self.device), : states.shape[1]] = states
        assert hidden is not None  # at least two buckets
        return hidden, mask

    def _run_encoder(self, inputs: list[list[int]], rows: list[int]) -> torch.Tensor:
        length = max(len(inputs[row]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for position, row in enumerate(rows):
            ids = inputs[row]
            input_ids[position, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[position, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        states: torch.Tensor = self.model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return states

    # ------------------------------------------------------------ generation
    @property
    def fixed_batches(self) -> bool:
        """Whether a batch's buffers stay where new_batch put them (decode_graphs): a batch for more rows is a new
        batch, made when the old one is empty."""
        return isinstance(self.decoder, GraphedDecoder)

    def new_batch(self, capacity: int = 8, row_limit: int | None = None) -> DecodeBatch:
        """An empty running batch for a scheduler to merge prefilled requests into; its buffers grow past `row_limit`
        rows (what a scheduler lane's memory holds) only as far as one merge needs, and its cross-attention buffer
        never past the longest input this engine accepts.

        With decode_graphs (`fixed_batches`) the buffers do not grow, as graphs replay fixed addresses: they are
        allocated at once for `capacity` rows, the longest input and the widest time axis (self_columns_bound),
        within the worst-case rows the memory budget reckons with (engine/memory.py), and every bucket is captured
        before the batch is returned (graphed_step.py). Only a request with more rows than `capacity` grows them."""
        shape = self.decoder.shape
        if not isinstance(self.decoder, GraphedDecoder):
            return DecodeBatch(shape, capacity=capacity, row_limit=row_limit, encoder_limit=self.max_input_tokens)
        batch = DecodeBatch(
            shape,
            capacity=capacity,
            encoder_columns=self.max_input_tokens,
            self_columns=self_columns_bound(MAX_NEW_TOKENS),
            row_limit=capacity,
            encoder_limit=self.max_input_tokens,
        )
        self.decoder.capture_buckets(batch)
        return batch

    @torch.inference_mode()
    def prefill(self, requests: Sequence[GenerationRequest], keys: Sequence[Hashable] | None = None) -> DecodeBatch:
        """Encode `requests` into a batch of fresh rows, one per returned sequence, ready to merge and step.

        The encoder and the cross-attention projections run once per request; each row's first
        step (the decoder start token) runs with the batch it is merged into.
        """
        keys = list(range(len(requests))) if keys is None else list(keys)
        if len(keys) != len(requests):
            raise ValueError(f"{len(keys)} keys for {len(requests)} requests")
        for index, request in enumerate(requests):
            self.check_request(request, f"requests[{index}].")
        if not requests:
            return DecodeBatch(self.decoder.shape, capacity=1)
        hidden, mask = self._encoder_states([request.input_ids for request in requests])
        cross_kv = self.decoder.cross_keys_values(hidden)
        owners, sampling, limits, row_request = [], [], [], []
        for index, (key, request) in enumerate(zip(keys, requests, strict=True)):
            params = request.params
            for sequence in range(params.num_return_sequences):
                owners.append(RowOwner(key, sequence))
                sampling.append(RowSampling.for_sequence(params, sequence))
                limits.append(params.max_new_tokens)
                row_request.append(index)
        rows = torch.tensor(row_request, device=self.device)
        return DecodeBatch.from_prefill(
            self.decoder.shape,
            cross_kv=cross_kv.index_select(2, rows),
            encoder_length=mask.sum(dim=1).index_select(0, rows),
            start_token=self.start_id,
            owners=owners,
            sampling=sampling,
            max_new_tokens=limits,
        )

    @torch.inference_mode()
    def step(self, batch: DecodeBatch) -> list[FinishedRow]:
        """One decoding step for every row: feed its pending token, choose the next, drop finished rows.

        A row finishes on </s> or at its own max_new_tokens; it leaves the batch at once.
        """
        if batch.rows == 0:
            return []
        plan, rows = batch.step_plan(), batch.step_rows()
        states = self.decoder.step(batch)  # on failure the time axis is as it was: a retry rewrites the same column
        try:
            head = self.model.lm_head
            chosen = sample_next_tokens(head(states), plan, rows, ExactLogits(head, states))
        except Exception:
            batch.length -= 1  # this step's column is rewritten by the retry
            raise
        batch.next_token[: batch.rows] = chosen
        rows.step += 1
        finished_rows: list[int] = []
        finished: list[FinishedRow] = []
        for row, token in enumerate(chosen.tolist()):  # the step's one read-back from the device
            output = batch.outputs[row]
            if token != self.eos_id:
                output.append(token)
            if token == self.eos_id or len(output) >= batch.max_new_tokens[row]:
                finished_rows.append(row)
                finished.append(FinishedRow(batch.owners[row], output))
        batch.drop(finished_rows)
        return finished

    def generate(self, requests: list[GenerationRequest]) -> list[list[list[int]]]:
        """For each request, `num_return_sequences` token-id lists (without </s>), in request order."""
        batch = self.prefill(requests)
        if isinstance(self.decoder, GraphedDecoder):
            # Graphs replay fixed buffer addresses: this thread's rows decode in a batch that outlives the call, as a
            # scheduler's does, so calls after the first replay instead of capturing afresh; a call with more rows
            # than it holds gets a larger one (with every bucket captured), not grown buffers that capture anew.
            held = getattr(self._held_batches, "batch", None)
            if held is None or held.capacity < batch.rows:
                self._held_batches.batch = held = None  # the smaller batch's buffers go before the larger's come
                held = self._held_batches.batch = self.new_batch(capacity=batch.rows)
            held.drop(list(range(held.rows)))  # rows an interrupted call left behind
            held.merge(batch)
            batch = held
        results: list[list[list[int]]] = [[[] for _ in range(r.params.num_return_sequences)] for r in requests]
        while batch.rows:
            for row in self.step(batch):
                key = row.owner.key
                assert isinstance(key, int)  # prefill's default keys: the requests' indices
                results[key][row.owner.sequence] = row.token_ids
        return results

    # --------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score(self, requests: list[ScoringRequest]) -> list[ScoringResult]:
        """Score every candidate label of every request (serve_app/engine/scoring.py says how)."""
        if not requests:
            return []
        for index, request in enumerate(requests):
            self.check_request(request, f"requests[{index}].")
        hidden, mask = self._encoder_states([request.input_ids for request in requests])
        rows = pack_rows(
            [request.label_ids for request in requests], self.start_id, self.eos_id, packed=self.packed_scoring
        )
        states = decode_rows(self.model, hidden, mask, rows)
        picked = target_log_probs(
            self.model.lm_head, states, rows, [request.normalization for request in requests], self.eos_id
        )
        totals = torch.zeros(rows.labels, dtype=torch.float32, device=self.device)
        totals.index_add_(0, torch.tensor(rows.target_label, device=self.device), picked)
        results = []
        offset = 0
        for request in requests:
            scores = totals[offset : offset + len(request.label_ids)]
            offset += len(request.label_ids)
            results.append(
                ScoringResult(log_scores=scores.tolist(), probabilities=torch.softmax(scores, dim=0).tolist())
            )
        return results
