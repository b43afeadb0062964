"""lm_head in the matmul layout the CPU runs fastest: every layout computes the same logits, the
choice follows the measurement, and the engine answers the same whichever layout it runs."""

from __future__ import annotations

import copy
import platform

import pytest
import torch
from torch import nn

from serve_app.engine import GenerationRequest, SamplingParams, ScoringRequest, Seq2SeqEngine
from serve_app.engine.output_head import (
    LAYOUT_MARGIN,
    LAYOUTS,
    OutputHead,
    choose_head_layout,
    install_output_head,
    layout_speedups,
)
from serve_app.engine.packed_linear import packing_available

pytestmark = pytest.mark.unit

WEIGHT = torch.zeros(16, 8)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_every_layout_computes_the_linear_logits(layout, dtype, tolerance):
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(1000, 64, generator=generator).to(dtype)
    states = torch.randn(5, 3, 64, generator=generator).to(dtype)  # [rows, positions, d_model], as scoring passes them
    if layout == "packed" and not packing_available(weight):
        # Only a torch built without mkldnn (not the pinned x86-64 CPU build: the test below) lacks the packed layout.
        pytest.skip("no oneDNN in this torch build: the packed layout does not exist here")
    head = OutputHead(weight, layout)
    assert head.weight.shape == (1000, 64) and torch.equal(head.weight, weight)
    assert (head.out_features, head.in_features) == (1000, 64)
    logits = head(states)
    assert logits.shape == (5, 3, 1000)
    expected = torch.nn.functional.linear(states.float(), weight.float())
    torch.testing.assert_close(logits.float(), expected, atol=tolerance * expected.abs().max().item(), rtol=tolerance)


@pytest.mark.parametrize(
    ("measured", "chosen"),
    [
        ({"linear": 1.0, "transposed": 1.24, "weight_first": 0.98}, "transposed"),  # float32 on the AMX test box
        ({"linear": 1.0, "transposed": 0.90, "weight_first": 1.52}, "weight_first"),  # bfloat16 there
        ({"linear": 1.0, "transposed": LAYOUT_MARGIN - 0.01, "weight_first": 1.01}, "linear"),  # a near-tie is noise
    ],
)
def test_the_layout_follows_the_measurement(measured, chosen):
    choice = choose_head_layout(WEIGHT, speedups=lambda weight: dict(measured))
    assert choice.layout == chosen
    assert choice.layout in choice.reason and f"{max(measured.values()):.2f}x" in choice.reason


def test_a_tied_head_is_never_a_transposed_copy_and_a_gpu_is_not_timed():
    measured = {"linear": 1.0, "transposed": 1.6, "weight_first": 1.2}
    assert choose_head_layout(WEIGHT, tied=True, speedups=lambda weight: dict(measured)).layout == "weight_first"
    never = lambda weight: pytest.fail("a GPU head is not timed")  # noqa: E731
    assert (
        choose_head_layout(torch.zeros(8, 4, device="meta"), speedups=never).layout == "linear"
    )  # any device but the CPU


def test_the_probe_times_every_layout_against_linear():
    calls = iter(range(1000))
    speedups = layout_speedups(
        torch.randn(4096, 64), timer=lambda: float(next(calls)), repeats=2
    )  # every call takes 1 tick
    assert speedups == {layout: 1.0 for layout in LAYOUTS}
    speedups = layout_speedups(torch.randn(4096, 64), repeats=2)
    assert set(speedups) == set(LAYOUTS) and speedups["linear"] == 1.0
    assert all(0.05 < x < 20 for x in speedups.values()), speedups
    speedups = layout_speedups(torch.randn(4096, 64).bfloat16(), repeats=2)
    assert set(speedups) == set(LAYOUTS), speedups
    with pytest.raises(ValueError, match="oneDNN"):
        OutputHead(torch.zeros(8, 4, dtype=torch.float16), "packed")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_block_logits_are_float32_sums_whatever_the_format(layout, dtype):
    """Each block's float32 logits lie within 2^-18 |logit| of the float64 sum of the same products (bfloat16) or
    are float32's own (float32); bfloat16's rounded logits are far off, which is why they are not used."""
    generator = torch.Generator().manual_seed(5)
    weight = (torch.randn(3000, 256, generator=generator) * 0.4).to(dtype)
    states = torch.randn(7, 256, generator=generator).to(dtype)
    if layout == "packed" and not packing_available(weight):
        return
    head = OutputHead(weight, layout)
    blocks = [head.exact_block_logits(states, index) for index in range(len(head.ranges))]
    assert [b.shape[1] for b in blocks] == [stop - first for first, stop in head.ranges]
    exact = torch.cat(blocks, dim=1)
    assert exact.dtype == torch.float32
    reference = states.double() @ weight.double().T
    error = (exact.double() - reference).abs().max().item()
    rounded = (head(states).double() - reference).abs().max().item()
    bound = 2.0**-17 * reference.abs().max().item() + 1e-5
    assert error <= bound, (error, bound)
    if dtype == torch.bfloat16:
        assert rounded > 50 * error  # the rounded logits' error, which the exact ones remove


def test_a_transposed_copy_of_a_tied_head_is_refused(demo_model_as_built):
    model = copy.deepcopy(demo_model_as_built.model)
    model.lm_head = nn.Linear(model.config.d_model, model.config.vocab_size, bias=False)
    model.lm_head.weight = model.shared.weight
    with pytest.raises(ValueError, match="tied"):
        install_output_head(model, "transposed")


@pytest.mark.parametrize(
    ("layout", "dtype"),
    [(layout, torch.float32) for layout in LAYOUTS if layout != "linear"]
    + [("packed", torch.bfloat16), ("transposed", torch.bfloat16)],
)
def test_the_engine_answers_the_same_with_every_layout(demo_model_as_built, layout, dtype):
    """On the demo model (in float32 and bfloat16): scores to 1e-6 and seeded samples token for token."""

    def engine_with(layout_name: str) -> Seq2SeqEngine:
        model = copy.deepcopy(demo_model_as_built.model).to(dtype)
        install_output_head(model, layout_name)
        return Seq2SeqEngine(model)

    tok = demo_model_as_built.tokenizer
    reference, relaid = engine_with("linear"), engine_with(layout)
    assert isinstance(relaid.model.lm_head, OutputHead) and relaid.model.lm_head.layout == layout
    scoring = [
        ScoringRequest(tok(text).input_ids, [tok(label).input_ids[:-1] for label in ("物流", "美食", "天气")])
        for text in ("物流太慢了", "这家面馆很好吃")
    ]
    for ours, theirs in zip(reference.score(scoring), relaid.score(scoring), strict=True):
        assert ours.log_scores == pytest.approx(theirs.log_scores, abs=1e-6)
    generation = [
        GenerationRequest(tok(text).input_ids, SamplingParams(num_return_sequences=2, max_new_tokens=12, seed=5))
        for text in ("物流太慢了", "学校开学后")
    ]
    assert reference.generate(generation) == relaid.generate(generation)


def test_the_pinned_torch_build_has_onednn_so_the_packed_tests_run() -> None:
    """The packed-layout tests skip only on a torch without mkldnn; on x86-64 (the pinned torch==2.13.0 CPU build,
    every machine this project tests on) that would hide the layout the service picks, so it fails here instead."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert packing_available(torch.zeros(4, 4, dtype=torch.bfloat16)), "this torch build has no oneDNN"
        assert packing_available(torch.zeros(4, 4))
