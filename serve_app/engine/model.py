"""Batched generation and label scoring on an mT5 model: tensor work only, no text.

Both paths run the encoder once per input, run the first decoder step once per
input, then fan the cached encoder/decoder state out to the rows that need it
(returned sequences, or candidate labels) instead of recomputing it per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import MT5ForConditionalGeneration
from transformers.cache_utils import EncoderDecoderCache

from serve_app.engine.errors import EngineInputError
from serve_app.engine.requests import GenerationRequest, ScoringRequest, ScoringResult
from serve_app.engine.sampling import RowSampler, row_seed

DEFAULT_MAX_INPUT_TOKENS = 512


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


class Seq2SeqEngine:
    """Runs GenerationRequests and ScoringRequests as padded batches on one model."""

    def __init__(self, model: MT5ForConditionalGeneration, max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS) -> None:
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self.max_input_tokens = max_input_tokens
        self.pad_id = self.config.pad_token_id
        self.eos_id = self.config.eos_token_id
        self.start_id = self.config.decoder_start_token_id
        self.vocab_size = model.lm_head.weight.shape[0]

    # ---------------------------------------------------------------- shared
    def _check_ids(self, ids: list[int], field: str) -> None:
        if not ids:
            raise EngineInputError(field, "must hold at least one token")
        if len(ids) > self.max_input_tokens:
            raise EngineInputError(field, f"must hold at most {self.max_input_tokens} tokens, got {len(ids)}")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise EngineInputError(field, f"token ids must lie in [0, {self.vocab_size})")

    def _encode(self, inputs: list[list[int]]) -> _Encoded:
        length = max(len(ids) for ids in inputs)
        input_ids = torch.full((len(inputs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), length), dtype=torch.long)
        for row, ids in enumerate(inputs):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = self.model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
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
    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest]) -> list[list[list[int]]]:
        """For each request, `num_return_sequences` token-id lists (without </s>), in request order."""
        if not requests:
            return []
        for index, request in enumerate(requests):
            self._check_ids(request.input_ids, f"requests[{index}].input_ids")
        encoded = self._encode([request.input_ids for request in requests])
        first_logits = self.model.lm_head(encoded.first_hidden)

        # One row per returned sequence; the encoder and first step ran once per request.
        row_request: list[int] = []
        row_params = []
        row_seeds: list[int | None] = []
        for index, request in enumerate(requests):
            params = request.params
            for sequence in range(params.num_return_sequences):
                row_request.append(index)
                row_params.append(params)
                row_seeds.append(None if params.seed is None else row_seed(params.seed, sequence))
        rows = torch.tensor(row_request, dtype=torch.long, device=self.device)
        encoded.fan_out(rows)
        logits = first_logits.index_select(0, rows)
        sampler = RowSampler(row_params, row_seeds, self.device)
        max_new = torch.tensor([p.max_new_tokens for p in row_params], dtype=torch.long, device=self.device)

        outputs: list[list[int]] = [[] for _ in row_params]
        active = torch.arange(len(row_params), device=self.device)  # original row of each live row
        for step in range(int(max_new.max())):
            next_tokens = sampler(logits)
            for row, token in zip(active.tolist(), next_tokens.tolist()):
                if token != self.eos_id:
                    outputs[row].append(token)
            finished = (next_tokens == self.eos_id) | (max_new[active] <= step + 1)
            if bool(finished.all()):
                break
            if bool(finished.any()):
                keep = (~finished).nonzero().squeeze(1)
                active = active[keep]
                next_tokens = next_tokens[keep]
                sampler.keep(keep)
                encoded.fan_out(keep)
            hidden = self._decode(encoded, next_tokens[:, None])
            logits = self.model.lm_head(hidden[:, -1])

        results: list[list[list[int]]] = [[] for _ in requests]
        for row, request_index in enumerate(row_request):
            results[request_index].append(outputs[row])
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
            self._check_ids(request.input_ids, f"requests[{index}].input_ids")
            if not request.label_ids:
                raise EngineInputError(f"requests[{index}].label_ids", "needs at least one label")
            for label_index, label in enumerate(request.label_ids):
                self._check_ids(label, f"requests[{index}].label_ids[{label_index}]")

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
        totals = first.index_select(0, rows).gather(1, first_target.to(self.device)[:, None]).squeeze(1) + rest

        results = []
        offset = 0
        for request in requests:
            scores = totals[offset : offset + len(request.label_ids)]
            offset += len(request.label_ids)
            results.append(ScoringResult(log_scores=scores.tolist(), probabilities=torch.softmax(scores, dim=0).tolist()))
        return results
