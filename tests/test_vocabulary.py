"""The vocabulary projection in float32 whatever the weights' format (serve_app/engine/vocabulary.py), and the
linear layers packed for oneDNN (serve_app/engine/packed_linear.py): same numbers as float64 sums of the same
products, blocks and candidates that change nothing, sampling that reads float32 logits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from serve_app.engine import GenerationRequest, SamplingParams, ScoringRequest, Seq2SeqEngine
from serve_app.engine.output_head import VOCABULARY_BLOCK, OutputHead
from serve_app.engine.packed_linear import (
    PACK_MARGIN,
    PackedLinear,
    choose_packing,
    pack_linears,
    packing_available,
)
from serve_app.engine.sampling import RowSampling, RowTensors, StepPlan, sample_next_tokens
from serve_app.engine.vocabulary import ExactLogits, exact_top_k, log_probs, top_k

pytestmark = pytest.mark.unit

BF16 = torch.bfloat16
needs_packing = pytest.mark.skipif(
    not packing_available(torch.zeros(1, dtype=BF16)), reason="this torch build has no oneDNN (mkldnn) on the CPU"
)


def head_and_states(vocab: int = 3 * VOCABULARY_BLOCK + 123, rows: int = 70, scale: float = 2.0, seed: int = 0):
    """A bfloat16 head with logits of |z| up to ~30, where bfloat16's spacing is 0.125."""
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(vocab, 96, generator=generator) * scale / 96**0.5 * 4).to(BF16)
    states = torch.randn(rows, 96, generator=generator).to(BF16)
    return weight, states


@pytest.mark.parametrize("layout", ["linear", "transposed", "packed"])
def test_label_log_probabilities_are_float32_over_the_full_vocabulary(layout):
    weight, states = head_and_states()
    if layout == "packed" and not packing_available(weight):
        # never on the pinned x86-64 build (tests/test_output_head.py fails there instead)
        pytest.skip("no oneDNN in this torch build: the packed layout does not exist here")
    head = OutputHead(weight, layout)
    target_state = torch.tensor([0, 0, 5, 69, 33, 64, 63])  # across the chunks of 64 states
    target_token = torch.tensor([0, weight.shape[0] - 1, VOCABULARY_BLOCK, 17, 2 * VOCABULARY_BLOCK + 5, 9, 9])
    ours = log_probs(head, states, target_state, target_token)
    logits = states.double() @ weight.double().T
    reference = torch.log_softmax(logits, dim=-1)[target_state, target_token]
    error = (ours.double() - reference).abs().max().item()
    # hi + lo: each logit within 2^-17 |logit| of the float32 sum (2^-8 for the rounded logits alone)
    assert error <= 2.0**-16 * logits.abs().max().item(), error
    # What rounding the logits to bfloat16 first would have given: far off.
    rounded = torch.log_softmax(head(states).float(), dim=-1)[target_state, target_token]
    assert (rounded.double() - reference).abs().max().item() > 50 * error


def test_a_plain_linear_head_is_read_the_same_way():
    weight, states = head_and_states(vocab=2 * VOCABULARY_BLOCK, rows=3)
    linear = nn.Linear(96, weight.shape[0], bias=False).to(BF16)
    linear.weight.data.copy_(weight)
    target_state, target_token = torch.tensor([0, 1, 2]), torch.tensor([1, VOCABULARY_BLOCK + 1, 77])
    ours = log_probs(linear, states, target_state, target_token)
    relaid = log_probs(OutputHead(weight, "linear"), states, target_state, target_token)
    assert torch.equal(ours, relaid)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_exact_top_k_is_the_float32_top_k(k):
    weight, states = head_and_states(rows=16, seed=2)
    head = OutputHead(weight, "linear")
    exact = ExactLogits(head, states)
    values, columns = exact_top_k(head(states), k, exact)
    reference = states.double() @ weight.double().T
    best = reference.topk(k, dim=-1).values
    # The chosen columns are the best k up to float32's own precision (two columns 4e-6 apart may swap).
    assert (reference.gather(1, columns) - best).abs().max().item() < 2e-5
    assert (values.double() - best).abs().max().item() < 1e-4


def test_rounded_ties_at_the_kth_value_are_settled_by_the_float32_logits():
    """Columns whose logits round to the same bfloat16 value: the float32 ones decide, as a float32 head would."""
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(4000, 32, generator=generator).to(BF16) * 0.01
    weight[100:140] = 0
    weight[100:140, 0] = 20.0  # forty columns at logit ~20 ...
    weight[100:140, 1] = torch.linspace(0.0, 0.06, 40).to(BF16)  # ... apart by less than bfloat16's 0.125 there
    states = torch.zeros(2, 32, dtype=BF16)
    states[:, 0], states[:, 1] = 1.0, 1.0
    head = OutputHead(weight, "linear")
    rounded = head(states)
    assert rounded[0, 100:140].unique().numel() < 5  # the rounded logits cannot tell them apart
    values, columns = exact_top_k(rounded, 3, ExactLogits(head, states))
    reference = (states.double() @ weight.double().T).topk(3, dim=-1).indices
    assert torch.equal(columns, reference)


def test_sampling_reads_float32_logits_where_the_head_rounds():
    """Seeded sampling from a bfloat16 head picks what it picks from the float32 logits of the same states."""
    weight, states = head_and_states(rows=24, seed=7)
    head = OutputHead(weight, "linear")
    exact = torch.cat([head.exact_block_logits(states, b) for b in range(len(head.ranges))], dim=1)
    kinds = [
        RowSampling(temperature=1.0, top_k=50, top_p=0.95, seed=11),
        RowSampling(temperature=0.7, top_k=5, top_p=1.0, seed=12),
        RowSampling(temperature=0.0, top_k=50, top_p=1.0, seed=0),  # greedy
    ]
    rows_sampling = [kinds[i % 3] for i in range(24)]
    plan = StepPlan.of(rows_sampling, weight.shape[0])
    for step in range(3):
        rows = RowTensors.build(rows_sampling, weight.shape[0], states.device)
        rows.step += step
        from_rounded = sample_next_tokens(head(states), plan, rows, ExactLogits(head, states))
        from_float32 = sample_next_tokens(exact, plan, rows)
        assert torch.equal(from_rounded, from_float32)
    # top-k off: every column in float32
    wide = [RowSampling(temperature=1.0, top_k=0, top_p=0.9, seed=s) for s in range(24)]
    plan, rows = StepPlan.of(wide, weight.shape[0]), RowTensors.build(wide, weight.shape[0], states.device)
    assert torch.equal(
        sample_next_tokens(head(states), plan, rows, ExactLogits(head, states)), sample_next_tokens(exact, plan, rows)
    )


def test_top_k_is_still_torch_topk():
    logits = torch.randn(3, 70_000)
    values, columns = top_k(logits, 20)
    expected = logits.topk(20, dim=-1)
    assert torch.equal(values, expected.values) and torch.equal(columns, expected.indices)


# ------------------------------------------------------------------ packed linear layers
@needs_packing
@pytest.mark.parametrize("rows", [1, 7, 32, 129])
def test_a_packed_linear_gives_f_linear_s_output_exactly(rows):
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(384, 256, generator=generator).to(BF16)
    states = torch.randn(rows, 3, 256, generator=generator).to(BF16)
    packed = PackedLinear(weight)
    assert torch.equal(packed(states), nn.functional.linear(states, weight))
    assert packed.weight.dtype == BF16 and (packed.in_features, packed.out_features) == (256, 384)


def test_packing_follows_the_measurement_and_the_format():
    weight = torch.zeros(64, 32, dtype=BF16)
    if packing_available(weight):
        assert choose_packing(weight, speedup=lambda w: PACK_MARGIN + 0.1).packed
        assert not choose_packing(weight, speedup=lambda w: PACK_MARGIN - 0.01).packed
    never = lambda w: pytest.fail("float16 is not timed")  # noqa: E731
    choice = choose_packing(weight.half(), speedup=never)
    assert not choice.packed and "float16" in choice.reason


@needs_packing
def test_the_engine_answers_the_same_with_packed_linear_layers(demo_model_as_built):
    """bfloat16 on the demo model: packed and plain linear layers give the same scores and seeded tokens."""
    plain = copy.deepcopy(demo_model_as_built.model).to(BF16)
    packed = copy.deepcopy(plain)
    assert pack_linears(packed) > 0
    assert not any(isinstance(module, nn.Linear) for name, module in packed.named_modules() if "lm_head" not in name)
    tok = demo_model_as_built.tokenizer
    scoring = [
        ScoringRequest(tok(text).input_ids, [tok(label).input_ids[:-1] for label in ("物流", "美食", "天气")])
        for text in ("物流太慢了", "这家面馆很好吃")
    ]
    ours, theirs = Seq2SeqEngine(plain), Seq2SeqEngine(packed)
    for a, b in zip(ours.score(scoring), theirs.score(scoring), strict=True):
        assert a.log_scores == b.log_scores
    generation = [
        GenerationRequest(tok(text).input_ids, SamplingParams(num_return_sequences=2, max_new_tokens=12, seed=5))
        for text in ("物流太慢了", "学校开学后")
    ]
    assert ours.generate(generation) == theirs.generate(generation)
