"""Batched generation and label scoring on an mT5 model: tensor work only, no text.

Both paths run the encoder once per input. Inputs of very different lengths are
encoded in length buckets, so short prompts are not padded to the longest one.
Generation runs the first decoder step once per input, then fans the cached
encoder/decoder state out to the rows of its returned sequences. Scoring packs all
candidate labels of an input into one decoder sequence (each label sees only the
start token and its own earlier tokens, at its own positions), so the encoder
state is never copied per label and the whole teacher-forced pass is one call.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from transformers import MT5ForConditionalGeneration
from transformers.cache_utils import EncoderDecoderCache

from serve_app.engine.errors import EngineInputError
from serve_app.engine.decode_batch import DecodeBatch, FinishedRow, RowOwner
from serve_app.engine.decoder import CachedDecoder
from serve_app.engine.requests import GenerationRequest, ScoringRequest, ScoringResult
from serve_app.engine.sampling import RowSampling, sample_next_tokens

DEFAULT_MAX_INPUT_TOKENS = 512
# Packed scoring builds [rows, heads, width, width] attention biases; wider label sets use one row per label.
MAX_PACKED_WIDTH = 256


@dataclass
class _Encoded:
    hidden: torch.Tensor  # [batch, length, d_model]
    mask: torch.Tensor  # [batch, length]
    cache: EncoderDecoderCache  # after the decoder start token
    first_hidden: torch.Tensor  # [batch, d_model]: decoder state after the start token

    def fan_out(self, rows: torch.Tensor) -> None:
        """Repeat/select batch entries: row r takes input rows[r]."""
        self.hidden = self.hidden.index_select(0, rows)
        self.mask = self.mask.index_select(0, rows)
        self.cache.reorder_cache(rows)


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


class Seq2SeqEngine:
    """Runs GenerationRequests and ScoringRequests as padded batches on one model."""

    # Encoding in length buckets: an extra encoder call is worth it when it saves more than this
    # many padded tokens (None: always one padded batch). Measured in bench/levers.py.
    bucket_overhead_tokens: int | None = 64
    # Scoring: all labels of an input in one packed decoder sequence (False: one decoder row per
    # label, encoder state fanned out to each). Measured in bench/levers.py.
    packed_scoring: bool = True

    def __init__(self, model: MT5ForConditionalGeneration, max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS) -> None:
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self.max_input_tokens = max_input_tokens
        self.pad_id = self.config.pad_token_id
        self.eos_id = self.config.eos_token_id
        self.start_id = self.config.decoder_start_token_id
        self.vocab_size = model.lm_head.weight.shape[0]
        self.decoder = CachedDecoder(model)

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
        hidden = None
        for bucket in buckets:
            states = self._run_encoder(inputs, bucket)
            if hidden is None:
                hidden = states.new_zeros((len(inputs), length, states.shape[-1]))
            hidden[torch.tensor(bucket, device=self.device), : states.shape[1]] = states
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
        return self.model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def _encode(self, inputs: list[list[int]]) -> _Encoded:
        hidden, mask = self._encoder_states(inputs)
        start = torch.full((len(inputs), 1), self.start_id, dtype=torch.long, device=self.device)
        step = self.model.decoder(
            input_ids=start, encoder_hidden_states=hidden, encoder_attention_mask=mask, use_cache=True
        )
        return _Encoded(hidden=hidden, mask=mask, cache=step.cache, first_hidden=step.last_hidden_state[:, -1])

    def _decode(self, encoded: _Encoded, tokens: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` [rows, steps] after the cached prefix; returns decoder states [rows, steps, d_model]."""
        out = self.model.decoder(
            input_ids=tokens,
            encoder_hidden_states=encoded.hidden,
            encoder_attention_mask=encoded.mask,
            cache=encoded.cache,
            use_cache=True,
        )
        return out.last_hidden_state

    # ------------------------------------------------------------ generation
    def new_batch(self, capacity: int = 8) -> DecodeBatch:
        """An empty running batch for a scheduler to merge prefilled requests into."""
        return DecodeBatch(self.decoder.shape, capacity=capacity)

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
            return self.new_batch(capacity=1)
        hidden, mask = self._encoder_states([request.input_ids for request in requests])
        cross_kv = self.decoder.cross_keys_values(hidden)
        owners, sampling, limits, row_request = [], [], [], []
        for index, (key, request) in enumerate(zip(keys, requests)):
            params = request.params
            for sequence in range(params.num_return_sequences):
                owners.append(RowOwner(key, sequence))
                sampling.append(RowSampling.for_sequence(params, sequence, self.device))
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
        states = self.decoder.step(batch)
        chosen = sample_next_tokens(self.model.lm_head(states), batch.sampling)
        batch.next_token[: batch.rows] = chosen
        finished_rows: list[int] = []
        finished: list[FinishedRow] = []
        for row, token in enumerate(chosen.tolist()):
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
        results: list[list[list[int]]] = [[[] for _ in range(r.params.num_return_sequences)] for r in requests]
        while batch.rows:
            for row in self.step(batch):
                results[row.owner.key][row.owner.sequence] = row.token_ids
        return results

    # --------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score(self, requests: list[ScoringRequest]) -> list[ScoringResult]:
        """Score every candidate label of every request.

        score = sum of log-probabilities of the label's tokens and </s>, teacher-forced
        after the decoder start token, normalised over the tokens that occur in the
        request's labels (plus </s>): only those lm_head rows are ever multiplied.
        """
        if not requests:
            return []
        for index, request in enumerate(requests):
            self.check_request(request, f"requests[{index}].")

        # Column space: the union of label tokens over the batch; each request masks to its own set.
        vocab = sorted({token for request in requests for label in request.label_ids for token in label} | {self.eos_id})
        column_of = {token: column for column, token in enumerate(vocab)}
        allowed = torch.zeros((len(requests), len(vocab)), dtype=torch.bool)
        for index, request in enumerate(requests):
            for token in {t for label in request.label_ids for t in label} | {self.eos_id}:
                allowed[index, column_of[token]] = True
        allowed = allowed.to(self.device)
        head = self.model.lm_head.weight.index_select(0, torch.tensor(vocab, device=self.device))

        def log_probs(hidden: torch.Tensor, request_of_row: torch.Tensor) -> torch.Tensor:
            logits = (hidden @ head.T).float()
            mask = allowed.index_select(0, request_of_row)
            if logits.dim() == 3:
                mask = mask[:, None, :]
            return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)

        packed_width = 1 + max(sum(len(label) for label in request.label_ids) for request in requests)
        if self.packed_scoring and packed_width <= MAX_PACKED_WIDTH:
            totals = self._score_packed(requests, packed_width, column_of, log_probs)
        else:
            totals = self._score_rows(requests, column_of, log_probs)

        results = []
        offset = 0
        for request in requests:
            scores = totals[offset : offset + len(request.label_ids)]
            offset += len(request.label_ids)
            results.append(ScoringResult(log_scores=scores.tolist(), probabilities=torch.softmax(scores, dim=0).tolist()))
        return results

    def _score_packed(self, requests: list[ScoringRequest], width: int, column_of: dict[int, int], log_probs) -> torch.Tensor:
        """Summed label log-probabilities [all labels, in order]: one decoder row per request.

        Row layout: start token, then every label's tokens one after another. A label token
        attends to the start token and to its own label's earlier tokens only, at the
        relative positions it would have alone (start 0, its tokens 1..n), so each label is
        scored exactly as if decoded alone; cross-attention has no positions, so sharing a
        row changes nothing there.
        """
        hidden, mask = self._encoder_states([request.input_ids for request in requests])
        rows = len(requests)
        tokens = torch.full((rows, width), self.pad_id, dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        segment = torch.full((rows, width), -2, dtype=torch.long)  # label index; -1 start; -2 padding
        tokens[:, 0] = self.start_id
        segment[:, 0] = -1
        source_row: list[int] = []
        source_position: list[int] = []
        target_column: list[int] = []
        label_of: list[int] = []
        label_index = 0
        eos_column = column_of[self.eos_id]
        for row, request in enumerate(requests):
            offset = 1
            for label in request.label_ids:
                count = len(label)
                tokens[row, offset : offset + count] = torch.tensor(label, dtype=torch.long)
                positions[row, offset : offset + count] = torch.arange(1, count + 1)
                segment[row, offset : offset + count] = label_index
                # The start state predicts the first token, the state at token i the token i+1, the last one </s>.
                source_position += [0, *range(offset, offset + count)]
                target_column += [column_of[token] for token in label] + [eos_column]
                source_row += [row] * (count + 1)
                label_of += [label_index] * (count + 1)
                label_index += 1
                offset += count

        decoder = self.model.decoder
        attention = decoder.block[0].layer[0].SelfAttention
        relative = positions[:, None, :] - positions[:, :, None]  # [rows, query, key]: key - query
        buckets = attention._relative_position_bucket(
            relative,
            bidirectional=False,
            num_buckets=attention.relative_attention_num_buckets,
            max_distance=attention.relative_attention_max_distance,
        )
        own_label = (segment[:, None, :] == segment[:, :, None]) & (segment[:, :, None] >= 0)
        visible = (own_label & (relative <= 0)) | (torch.arange(width) == 0)[None, None, :]
        dtype = hidden.dtype
        lowest = torch.finfo(dtype).min
        bias = attention.relative_attention_bias(buckets.to(self.device)).permute(0, 3, 1, 2).to(dtype)
        self_bias = torch.where(visible.to(self.device)[:, None], bias, torch.tensor(lowest, dtype=dtype, device=self.device))
        cross_bias = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill(mask == 0, lowest)[:, None, None, :]

        states = decoder.dropout(decoder.embed_tokens(tokens.to(self.device)))
        for block in decoder.block:
            states = block(states, None, self_bias, hidden, None, cross_bias, cache=None)[0]
        states = decoder.dropout(decoder.final_layer_norm(states))

        scores = log_probs(states, torch.arange(rows, device=self.device))  # [rows, width, columns]
        picked = scores[
            torch.tensor(source_row, device=self.device),
            torch.tensor(source_position, device=self.device),
            torch.tensor(target_column, device=self.device),
        ]
        totals = torch.zeros(label_index, dtype=picked.dtype, device=self.device)
        return totals.index_add_(0, torch.tensor(label_of, device=self.device), picked)

    def _score_rows(self, requests: list[ScoringRequest], column_of: dict[int, int], log_probs) -> torch.Tensor:
        """Summed label log-probabilities [all labels, in order]: one decoder row per label, fanned-out state."""
        encoded = self._encode([request.input_ids for request in requests])
        request_ids = torch.arange(len(requests), device=self.device)
        first = log_probs(encoded.first_hidden, request_ids)  # [requests, columns]

        row_request = [index for index, request in enumerate(requests) for _ in request.label_ids]
        labels = [label for request in requests for label in request.label_ids]
        rows = torch.tensor(row_request, dtype=torch.long, device=self.device)
        longest = max(len(label) for label in labels)
        tokens = torch.full((len(labels), longest), self.pad_id, dtype=torch.long)
        targets = torch.full((len(labels), longest), column_of[self.eos_id], dtype=torch.long)
        valid = torch.zeros((len(labels), longest), dtype=torch.bool)
        first_target = torch.empty(len(labels), dtype=torch.long)
        for row, label in enumerate(labels):
            columns = [column_of[token] for token in label] + [column_of[self.eos_id]]
            first_target[row] = columns[0]
            tokens[row, : len(label)] = torch.tensor(label)
            # The state after token p predicts token p+1, and </s> after the last one.
            targets[row, : len(label)] = torch.tensor(columns[1:])
            valid[row, : len(label)] = True
        encoded.fan_out(rows)
        # Right padding needs no decoder mask: causal attention never lets a real position see a later pad.
        hidden = self._decode(encoded, tokens.to(self.device))
        rest = log_probs(hidden, rows).gather(2, targets.to(self.device)[:, :, None]).squeeze(2)
        rest = rest.masked_fill(~valid.to(self.device), 0.0).sum(dim=1)
        return first.index_select(0, rows).gather(1, first_target.to(self.device)[:, None]).squeeze(1) + rest
