"""int8 linear layers (serve_app/engine/int8_linear.py): close to float32, the same bits for a row whatever rows
share its batch, with oneDNN's kernel and with torch._int_mm alike; and `dtype: int8` built from them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from serve_app.engine import Seq2SeqEngine, load_model
from serve_app.engine.int8_linear import INT8_MAX, Int8Linear, quantise_linears, quantise_rows
from serve_app.engine.requests import GenerationRequest, SamplingParams, ScoringRequest

pytestmark = pytest.mark.unit

KERNELS = [pytest.param(True, id="onednn"), pytest.param(False, id="int_mm")]


def _weight(out_features: int = 96, in_features: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator) / in_features**0.5
    weight[3] *= 40  # a loud output channel: per-channel scales keep the others fine
    return weight


def _states(rows: int, in_features: int = 64, seed: int = 1) -> torch.Tensor:
    states = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(seed))
    states[0] *= 50  # a loud row: per-row scales keep the others fine
    return states


def test_rows_quantise_to_int8_within_half_a_step_of_their_own_scale():
    values = _states(5)
    quantised, scale = quantise_rows(values)
    assert quantised.dtype == torch.int8 and scale.shape == (5, 1)
    assert torch.equal(quantised.abs().amax(dim=1), torch.full((5,), int(INT8_MAX), dtype=torch.int8))
    assert bool(((quantised.float() * scale - values).abs() <= scale / 2 + 1e-6).all())
    unsigned, same_scale = quantise_rows(values, 128)
    assert unsigned.dtype == torch.uint8 and torch.equal(unsigned.int() - 128, quantised.int())
    assert torch.equal(same_scale, scale)
    zeros, _ = quantise_rows(torch.zeros(2, 8))
    assert torch.equal(zeros, torch.zeros(2, 8, dtype=torch.int8))
    with pytest.raises(ValueError, match="zero_point must be 0 or 128"):
        quantise_rows(values, 1)


@pytest.mark.parametrize("onednn", KERNELS)
def test_an_int8_layer_is_close_to_float32_even_beside_a_loud_row_and_channel(onednn):
    weight, states = _weight(), _states(9)
    layer = Int8Linear(weight, onednn=onednn)
    out = layer(states)
    reference = states @ weight.T
    assert out.dtype == torch.float32 and out.shape == (9, 96)
    quiet_rows, quiet_columns = (
        out[1:, [c for c in range(96) if c != 3]],
        reference[1:, [c for c in range(96) if c != 3]],
    )
    assert float((quiet_rows - quiet_columns).norm() / quiet_columns.norm()) < 0.02
    assert float((out - reference).norm() / reference.norm()) < 0.02
    assert torch.equal(layer(torch.zeros(2, 64)), torch.zeros(2, 96))


@pytest.mark.parametrize("onednn", KERNELS)
def test_a_row_gets_the_same_bits_alone_and_in_any_batch(onednn):
    layer = Int8Linear(_weight(), onednn=onednn)
    batch = _states(33)
    together = layer(batch)
    for row in (0, 1, 17, 32):
        assert torch.equal(layer(batch[row : row + 1]), together[row : row + 1])
    assert torch.equal(layer(batch[5:12]), together[5:12])
    assert torch.equal(layer(batch.view(3, 11, 64)), together.view(3, 11, 96))  # any leading shape


def test_both_kernels_give_the_same_sums_and_the_rows_a_head_gathers():
    weight, states = _weight(), _states(7)
    onednn, int_mm = Int8Linear(weight, onednn=True), Int8Linear(weight, onednn=False)
    torch.testing.assert_close(onednn(states), int_mm(states), rtol=1e-6, atol=1e-5)
    rows = torch.tensor([3, 0, 95])
    gathered = onednn.dequantised_rows(rows)
    assert gathered.dtype == torch.float32 and torch.allclose(
        gathered, weight[rows], atol=float(weight.abs().max()) / 254
    )
    assert onednn.weight.dtype == torch.int8 and onednn.weight.shape == (96, 64)
    with_bias = Int8Linear(weight, torch.ones(96))
    assert torch.allclose(with_bias(states), onednn(states) + 1)


def test_quantise_linears_replaces_the_named_layers_and_skips():
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 4))
    assert quantise_linears(model, names={"2"}) == 1
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], Int8Linear)
    assert quantise_linears(model, skip=("0",)) == 0
    assert quantise_linears(model) == 1 and isinstance(model[0], Int8Linear)


def test_int8_engine_scores_and_seeded_answers_are_the_same_alone_and_batched(demo_model):
    loaded = load_model("demo", device="cpu", dtype="int8")
    assert loaded.describe()["dtype"] == "int8"
    assert sum(isinstance(m, Int8Linear) for m in loaded.model.modules()) > 0
    assert not any(isinstance(m, nn.Linear) for m in loaded.model.modules())  # lm_head too
    engine = Seq2SeqEngine(loaded.model)
    tok = demo_model.tokenizer
    texts = ["今天阳光明媚", "这家餐厅的菜很好吃", "我们下周去北京旅游", "股市今天大涨", "球队赢得了冠军"]
    labels = [tok(label, add_special_tokens=False).input_ids + [tok.eos_token_id] for label in ("天气", "美食", "旅游")]
    requests = [
        ScoringRequest(tok(f"文本分类。\n候选标签：天气,美食,旅游。\n文本内容：{text}").input_ids, labels)
        for text in texts
    ]
    batched = engine.score(requests)
    for request, in_batch in zip(requests, batched, strict=True):
        assert engine.score([request])[0].probabilities == in_batch.probabilities  # bitwise
    reference = Seq2SeqEngine(demo_model.model).score(requests)
    worst = max(
        abs(a - b)
        for ours, ref in zip(batched, reference, strict=True)
        for a, b in zip(ours.probabilities, ref.probabilities, strict=True)
    )
    assert worst < 0.02  # demo model; `python -m bench fidelity` measures it over 256 inputs
    seeded = [
        GenerationRequest(r.input_ids, SamplingParams(num_return_sequences=2, max_new_tokens=8, seed=5))
        for r in requests
    ]
    together = engine.generate(seeded)
    assert [engine.generate([request])[0] for request in seeded] == together
