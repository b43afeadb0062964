"""Engine: checkpoint layouts, label scoring, batched per-request sampling, spec errors."""

from __future__ import annotations

import socket

import pytest
import torch
from transformers import T5ForConditionalGeneration

from serve_app.engine import (
    GenerationRequest,
    ModelSpecError,
    SamplingParams,
    ScoringRequest,
    Seq2SeqEngine,
    load_model,
)
from serve_app.engine.checkpoint import random_mt5, save_checkpoint
from serve_app.engine.demo import demo_model_dir
from serve_app.engine.errors import EngineInputError, ParameterRangeError
from serve_app.engine.spec import resolve_spec

pytestmark = pytest.mark.unit

TINY = {"vocab_size": 0, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}


@pytest.fixture(scope="module")
def tiny_model(demo_model):
    """A tiny random mT5 with an untied lm_head, sized to the demo tokenizer."""
    return random_mt5({**TINY, "vocab_size": len(demo_model.tokenizer)}, seed=7)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text).input_ids


# ------------------------------------------------------------------ loading
@pytest.mark.parametrize(
    ("layout", "model_type"),
    [("modelscope", "t5"), ("modelscope", "mt5"), ("safetensors", "mt5"), ("safetensors", "t5")],
)
def test_checkpoint_layouts_load_with_untied_head_and_equal_logits(
    tmp_path, tiny_model, demo_model, layout, model_type
):
    out = save_checkpoint(
        tiny_model, tmp_path / "ckpt", layout=layout, model_type=model_type, tokenizer_dir=demo_model.resolved.path
    )
    assert (out / ("pytorch_model.bin" if layout == "modelscope" else "model.safetensors")).is_file()
    loaded = load_model(str(out), device="cpu", dtype="float32")
    model = loaded.model
    assert not loaded.is_demo
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, tiny_model.lm_head.weight)
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
    input_ids = torch.tensor([ids(loaded.tokenizer, "今天阳光明媚,适合去西湖边散步")])
    decoder_ids = torch.tensor([[0, 5, 9, 17]])
    with torch.no_grad():
        expected = tiny_model(input_ids=input_ids, decoder_input_ids=decoder_ids).logits
        actual = model(input_ids=input_ids, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_plain_transformers_t5_loading_would_scale_decoder_outputs(tmp_path, tiny_model, demo_model):
    """The pitfall the loader exists for: a model_type t5 config.json without tie_word_embeddings makes
    transformers 5 scale decoder outputs, which changes the logits. Our loader's logits are the true ones."""
    out = save_checkpoint(
        tiny_model, tmp_path / "t5", layout="modelscope", model_type="t5", tokenizer_dir=demo_model.resolved.path
    )
    naive = T5ForConditionalGeneration.from_pretrained(str(out)).eval()
    ours = load_model(str(out), device="cpu", dtype="float32").model
    input_ids = torch.tensor([[259, 338, 323, 1]])
    decoder_ids = torch.tensor([[0, 5]])
    with torch.no_grad():
        naive_logits = naive(input_ids=input_ids, decoder_input_ids=decoder_ids).logits
        our_logits = ours(input_ids=input_ids, decoder_input_ids=decoder_ids).logits
        true_logits = tiny_model(input_ids=input_ids, decoder_input_ids=decoder_ids).logits
    assert naive.config.scale_decoder_outputs is True
    assert not torch.allclose(naive_logits, true_logits, atol=1e-3)
    torch.testing.assert_close(our_logits, true_logits, atol=1e-5, rtol=1e-5)


def test_demo_model_is_cached_and_marked(demo_model):
    assert demo_model.is_demo
    assert demo_model.describe() == {
        "model": "demo",
        "demo": True,
        "device": "cpu",
        "dtype": "float32",
        "dtype_reason": "float32 (requested)",
    }
    assert demo_model_dir() == demo_model.resolved.path
    assert (demo_model.resolved.path / "spiece.model").is_file()
    assert demo_model.tokenizer.eos_token_id == 1 and demo_model.tokenizer.pad_token_id == 0
    # A real sentencepiece vocabulary: Chinese words from the corpus are single pieces, not characters.
    pieces = demo_model.tokenizer.convert_ids_to_tokens(ids(demo_model.tokenizer, "文本分类")[:-1])
    assert len(pieces) < 4


# ------------------------------------------------------------------ spec errors
@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection or call a hub download fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network touched")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import huggingface_hub
    from modelscope_hub import compat as modelscope_download

    monkeypatch.setattr(modelscope_download, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


@pytest.mark.parametrize("spec", ["/nonexistent/mt5-checkpoint", "./models/missing", "~/no-such-model-dir"])
def test_unresolvable_local_spec_names_spec_place_and_fix_without_network(no_network, spec):
    with pytest.raises(ModelSpecError) as err:
        resolve_spec(spec)
    message = str(err.value)
    assert repr(spec) in message
    assert "does not exist" in message
    assert "'demo'" in message and "MT5_MODEL" in message


def test_local_dir_without_config_is_refused(no_network, tmp_path):
    with pytest.raises(ModelSpecError, match="no config.json"):
        resolve_spec(str(tmp_path))


def test_modelscope_failure_is_a_clear_error_not_a_fallback(monkeypatch):
    from modelscope_hub import compat as modelscope_download

    def offline(model_id, *args, **kwargs):
        raise ConnectionError("no route to modelscope.cn")

    monkeypatch.setattr(modelscope_download, "snapshot_download", offline)
    with pytest.raises(ModelSpecError) as err:
        load_model("iic/nlp_mt5_zero-shot-augment_chinese-base")
    assert "'iic/nlp_mt5_zero-shot-augment_chinese-base'" in str(err.value)
    assert "ModelScope" in str(err.value)


# ------------------------------------------------------------------ scoring
def brute_force_scores(
    model, input_ids: list[int], labels: list[list[int]], eos: int = 1, normalization: str = "vocabulary"
) -> list[float]:
    """One plain transformers forward pass per label, teacher-forced after the decoder start token: the sum of
    log-probabilities of the label's tokens and </s>, normalised over the full vocabulary (the model's own
    likelihood) or, for label_tokens, over the tokens of all the labels plus </s>."""
    allowed = sorted({t for label in labels for t in label} | {eos})
    scores = []
    for label in labels:
        decoder = torch.tensor([[0] + label])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([input_ids]), decoder_input_ids=decoder).logits[0].float()
        if normalization == "vocabulary":
            log_probs, targets = torch.log_softmax(logits, dim=-1), label + [eos]
        else:
            log_probs, targets = (
                torch.log_softmax(logits[:, allowed], dim=-1),
                [allowed.index(t) for t in label + [eos]],
            )
        scores.append(float(sum(log_probs[position, column] for position, column in enumerate(targets))))
    return scores


def label_ids(tokenizer, labels: list[str]) -> list[list[int]]:
    return [ids(tokenizer, label)[:-1] for label in labels]


@pytest.mark.parametrize("normalization", ["vocabulary", "label_tokens"])
def test_label_scores_equal_brute_force_reference(engine, demo_model, normalization):
    tok = demo_model.tokenizer
    prompt = ids(tok, "文本分类。\n候选标签：天气,美食,旅游,新能源汽车。\n文本内容：今天阳光明媚,适合去西湖边散步")
    labels = label_ids(tok, ["天气", "美食", "旅游", "新能源汽车"])
    result = engine.score([ScoringRequest(prompt, labels, normalization=normalization)])[0]
    reference = brute_force_scores(demo_model.model, prompt, labels, normalization=normalization)
    assert result.log_scores == pytest.approx(reference, abs=1e-5)
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-6)
    expected_probs = torch.softmax(torch.tensor(reference), 0).tolist()
    assert result.probabilities == pytest.approx(expected_probs, abs=1e-6)


def test_full_vocabulary_scores_equal_plain_mt5_on_a_checkpoint_built_like_the_real_one(
    tmp_path, tiny_model, demo_model
):
    """ModelScope layout, model_type t5, untied head: our loader + packed scorer against transformers' own forward."""
    out = save_checkpoint(
        tiny_model, tmp_path / "ckpt", layout="modelscope", model_type="t5", tokenizer_dir=demo_model.resolved.path
    )
    loaded = load_model(str(out), device="cpu", dtype="float32")
    engine = Seq2SeqEngine(loaded.model)
    tok = loaded.tokenizer
    texts = ["等了三天还没发货,客服也不回消息", "这家面馆的牛肉面味道一般", "股市今天大幅上涨"]
    labels = label_ids(tok, ["物流延迟", "商品缺货", "售后响应慢", "价格争议"])
    requests = [
        ScoringRequest(
            ids(tok, f"文本分类。\n候选标签：物流延迟,商品缺货,售后响应慢,价格争议。\n文本内容：{t}"), labels
        )
        for t in texts
    ]
    for request, result in zip(requests, engine.score(requests), strict=True):
        reference = brute_force_scores(tiny_model, request.input_ids, labels)
        assert result.log_scores == pytest.approx(reference, abs=1e-5)
        assert result.probabilities == pytest.approx(torch.softmax(torch.tensor(reference), 0).tolist(), abs=1e-5)


def test_full_vocabulary_projection_runs_only_at_label_states(engine, demo_model, monkeypatch):
    """The 250k-column projection is the cost: once per distinct state that predicts a label token."""
    from serve_app.engine import scoring
    from serve_app.engine.output_head import OutputHead

    projected, columns = [], []
    original, block = scoring.log_probs, OutputHead.exact_block_logits

    def blocks(head, states, index):
        logits = block(head, states, index)
        columns.append(logits.shape[1])
        return logits

    monkeypatch.setattr(
        scoring, "log_probs", lambda head, states, *a: projected.append(states.shape) or original(head, states, *a)
    )
    monkeypatch.setattr(OutputHead, "exact_block_logits", blocks)
    tok = demo_model.tokenizer
    labels = label_ids(tok, ["物流延迟", "商品缺货", "售后"])
    engine.score([ScoringRequest(ids(tok, "物流太慢了"), labels)])
    prefixes = {tuple(label[: end + 1]) for label in labels for end in range(len(label))}
    assert [shape[0] for shape in projected] == [
        1 + len(prefixes)
    ]  # the shared start state, then one per distinct label prefix
    assert len(prefixes) < sum(len(label) for label in labels)  # 物流延迟 and 商品缺货 share their first piece here
    assert sum(columns) == demo_model.model.config.vocab_size  # every column once, block by block


def test_label_token_scoring_never_multiplies_the_full_vocabulary(engine, demo_model, monkeypatch):
    calls = []
    original = demo_model.model.lm_head.forward
    monkeypatch.setattr(demo_model.model.lm_head, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    tok = demo_model.tokenizer
    engine.score(
        [ScoringRequest(ids(tok, "物流太慢了"), label_ids(tok, ["物流延迟", "商品缺货"]), normalization="label_tokens")]
    )
    assert calls == []


def test_scores_identical_alone_and_in_a_batch_of_16_unrelated_prompts(engine, demo_model):
    tok = demo_model.tokenizer
    texts = ["今天阳光明媚", "股市今天大幅上涨,银行板块领涨", "这家面馆的牛肉面味道一般", "明天有大雨,出门记得带伞"]
    label_sets = [
        ["天气", "美食"],
        ["财经", "体育", "科技"],
        ["积极", "消极", "中性"],
        ["物流延迟", "商品缺货", "售后响应慢", "价格争议"],
    ]
    target = ScoringRequest(
        ids(tok, "文本分类。\n候选标签：天气,旅游。\n文本内容：周末我们去了杭州旅游"), label_ids(tok, ["天气", "旅游"])
    )
    alone = engine.score([target])[0]
    others = [
        ScoringRequest(ids(tok, texts[i % 4] * (1 + i % 3)), label_ids(tok, label_sets[(i + 1) % 4])) for i in range(15)
    ]
    batch = others[:7] + [target] + others[7:]
    together = engine.score(batch)[7]
    assert together.probabilities == pytest.approx(alone.probabilities, abs=1e-6)
    assert together.log_scores == pytest.approx(alone.log_scores, abs=1e-5)
    # and every other prompt equals its own brute-force reference inside the mixed batch
    for request, result in zip(batch, engine.score(batch), strict=True):
        assert result.log_scores == pytest.approx(
            brute_force_scores(demo_model.model, request.input_ids, request.label_ids), abs=1e-4
        )


# ------------------------------------------------------------------ generation
PROMPTS = [
    "这家餐厅的服务态度很好,上菜速度也快",
    "物流太慢了",
    "新能源汽车的续航里程越来越长,充电桩也越来越多",
    "学校开学后",
]


def test_seeded_generation_identical_alone_and_in_mixed_batch(engine, demo_model):
    tok = demo_model.tokenizer
    target = GenerationRequest(
        ids(tok, PROMPTS[0]),
        SamplingParams(num_return_sequences=3, max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95, seed=42),
    )
    alone = engine.generate([target])[0]
    mixed = [
        GenerationRequest(
            ids(tok, PROMPTS[1]), SamplingParams(num_return_sequences=2, max_new_tokens=5, temperature=0.7, seed=1)
        ),
        GenerationRequest(
            ids(tok, PROMPTS[2]), SamplingParams(num_return_sequences=1, max_new_tokens=20, temperature=0.0)
        ),
        target,
        GenerationRequest(
            ids(tok, PROMPTS[3]),
            SamplingParams(num_return_sequences=4, max_new_tokens=3, temperature=1.5, top_k=0, top_p=0.5),
        ),
    ]
    assert engine.generate(mixed)[2] == alone
    assert engine.generate(list(reversed(mixed)))[1] == alone
    assert len(alone) == 3 and len({tuple(seq) for seq in alone}) == 3  # three different samples
    other_seed = GenerationRequest(target.input_ids, SamplingParams(num_return_sequences=3, max_new_tokens=12, seed=43))
    assert engine.generate([other_seed])[0] != alone


@pytest.fixture(scope="module")
def bf16_engine():
    return Seq2SeqEngine(load_model("demo", device="cpu", dtype="bfloat16").model)


def test_bfloat16_seeded_generation_identical_alone_and_in_a_batch_of_32(bf16_engine, demo_model):
    """Batch-invariant in bfloat16 too: a row's numbers do not depend on the rows beside it or on how many
    threads run them (row-invariant matmuls, attention over padded keys; docs/perf-notes.md, "batch-invariant")."""
    tok = demo_model.tokenizer
    requests = [
        GenerationRequest(
            ids(tok, PROMPTS[i % 4] * (1 + i % 3)),
            SamplingParams(num_return_sequences=2, max_new_tokens=10, top_k=(0, 5, 50)[i % 3], seed=100 + i),
        )
        for i in range(32)
    ]
    batched = bf16_engine.generate(requests)
    alone = [bf16_engine.generate([request])[0] for request in requests[:12]]
    assert alone == batched[:12]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy scheduler lane runs on its share of the cores
    try:
        assert [bf16_engine.generate([request])[0] for request in requests[:4]] == batched[:4]
    finally:
        torch.set_num_threads(threads)


def test_bfloat16_scores_identical_alone_and_in_a_batch(bf16_engine, demo_model):
    """Bitwise: every attention pads its keys to a multiple of 16 (engine/attention.py), so a padded row's softmax
    groups its sums as the row alone does; the matmuls are row-invariant."""
    tok = demo_model.tokenizer
    labels = label_ids(tok, ["物流延迟", "商品缺货", "售后响应慢", "价格争议"])
    requests = [ScoringRequest(ids(tok, PROMPTS[i % 4] * (1 + i % 5)), labels) for i in range(20)]
    batched = bf16_engine.score(requests)
    for request, together in zip(requests, batched, strict=True):
        assert together.log_scores == bf16_engine.score([request])[0].log_scores


def _step_distributions(model, input_ids: list[int], sequence: list[int]) -> torch.Tensor:
    """Teacher-forced next-token logits at each step of `sequence` (one row per generated token)."""
    decoder = torch.tensor([[0] + sequence[:-1]])
    with torch.no_grad():
        return model(input_ids=torch.tensor([input_ids]), decoder_input_ids=decoder).logits[0].float()


def test_each_row_obeys_its_own_limits_in_one_batch(engine, demo_model):
    tok = demo_model.tokenizer
    model = demo_model.model
    prompt = ids(tok, PROMPTS[0])
    requests = [
        GenerationRequest(
            prompt,
            SamplingParams(num_return_sequences=2, max_new_tokens=3, temperature=1.0, top_k=0, top_p=1.0, seed=1),
        ),
        GenerationRequest(prompt, SamplingParams(num_return_sequences=1, max_new_tokens=9, temperature=0.0)),
        GenerationRequest(
            prompt,
            SamplingParams(num_return_sequences=3, max_new_tokens=7, temperature=1.3, top_k=3, top_p=1.0, seed=2),
        ),
        GenerationRequest(
            prompt,
            SamplingParams(num_return_sequences=3, max_new_tokens=7, temperature=0.8, top_k=0, top_p=0.3, seed=3),
        ),
        GenerationRequest(
            prompt, SamplingParams(num_return_sequences=2, max_new_tokens=6, temperature=2.0, top_k=1, seed=4)
        ),
    ]
    free, greedy, top_k3, nucleus, top_k1 = engine.generate(requests)

    # max_length: each row stops at its own limit (the random demo model rarely emits </s>)
    assert all(len(seq) <= 3 for seq in free) and all(len(seq) <= 7 for seq in top_k3 + nucleus)
    assert len(greedy[0]) <= 9
    # temperature 0 is exactly transformers' greedy decoding
    expected = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=9)[0].tolist()
    assert greedy[0] == [t for t in expected[1:] if t not in (0, 1)]
    # top_k 1 is greedy whatever the temperature
    assert top_k1[0] == greedy[0][:6] and top_k1[1] == greedy[0][:6]
    # every top-k=3 token was among the 3 most likely at its step
    for seq in top_k3:
        logits = _step_distributions(model, prompt, seq)
        for step, token in enumerate(seq):
            assert int((logits[step] > logits[step, token]).sum()) < 3
    # every nucleus token lies inside the top-p=0.3 mass at temperature 0.8
    for seq in nucleus:
        probs = torch.softmax(_step_distributions(model, prompt, seq) / 0.8, dim=-1)
        for step, token in enumerate(seq):
            assert float(probs[step][probs[step] > probs[step, token]].sum()) < 0.3


def test_encoder_runs_once_per_input_not_per_returned_sequence(engine, demo_model, monkeypatch):
    batch_sizes = []
    encoder = demo_model.model.encoder
    original = encoder.forward
    monkeypatch.setattr(
        encoder, "forward", lambda *a, **k: batch_sizes.append(k["input_ids"].shape[0]) or original(*a, **k)
    )
    tok = demo_model.tokenizer
    engine.generate(
        [
            GenerationRequest(ids(tok, p), SamplingParams(num_return_sequences=5, max_new_tokens=2, seed=1))
            for p in PROMPTS[:2]
        ]
    )
    assert batch_sizes == [2]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_return_sequences": 0}, "num_return_sequences"),
        ({"num_return_sequences": 11}, "num_return_sequences"),
        ({"max_new_tokens": 0}, "max_length"),
        ({"max_new_tokens": 513}, "max_length"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 3.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"num_return_sequences": True}, "num_return_sequences"),
    ],
)
def test_out_of_range_parameters_name_the_field(kwargs, field):
    with pytest.raises(ParameterRangeError) as err:
        SamplingParams(**kwargs)
    assert err.value.field == field and err.value.rule


def test_engine_rejects_empty_and_out_of_vocabulary_ids(engine):
    with pytest.raises(EngineInputError, match="at least one token"):
        engine.generate([GenerationRequest([], SamplingParams())])
    with pytest.raises(EngineInputError, match="token ids"):
        engine.score([ScoringRequest([5, 10**9], [[5]])])
    with pytest.raises(EngineInputError, match="at least one label"):
        engine.score([ScoringRequest([5, 1], [])])


# ------------------------------------------------------------------ precision
def _base_shape():
    from serve_app.engine.precision import MatmulShape

    return MatmulShape(768, 2048)  # mT5-base's feed-forward


class FakeTimer:
    """A clock that advances by a per-dtype cost each time a timed block starts: the probe's only view of time."""

    def __init__(self, fp32_s: float, bf16_s: float) -> None:
        self.now = 0.0
        self.fp32_s, self.bf16_s = fp32_s, bf16_s
        self.calls = 0

    def __call__(self) -> float:
        # The probe reads the clock twice per repeat: float32's repeats first, then bfloat16's.
        from serve_app.engine.precision import PROBE_REPEATS

        self.calls += 1
        per_repeat = self.fp32_s if self.calls <= 2 * PROBE_REPEATS else self.bf16_s
        self.now += per_repeat if self.calls % 2 == 0 else 0.0
        return self.now


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "chosen"),
    [
        (3.0e-3, 1.0e-3, torch.bfloat16),  # native bf16 (AMX, AVX512-BF16): 3x
        (1.0e-3, 4.0e-3, torch.float32),  # emulated bf16: 4x slower
        (1.2e-3, 1.0e-3, torch.float32),  # 1.2x: under the margin, not worth bf16's rounding
    ],
)
def test_auto_on_a_cpu_follows_the_measured_speed(fp32_s, bf16_s, chosen):
    from serve_app.engine.precision import bf16_speedup, choose_precision

    timer = FakeTimer(fp32_s, bf16_s)
    shape = _base_shape()
    precision = choose_precision(
        "auto", torch.device("cpu"), shape, speedup=lambda s: bf16_speedup(s, timer=timer, rows=2)
    )
    assert precision.dtype == chosen and not precision.int8
    assert f"measured {fp32_s / bf16_s:.2f}x float32's" in precision.reason and "d_model 768" in precision.reason


def test_auto_on_this_cpu_matches_a_direct_measurement():
    """The choice agrees with the engine's own speed on mT5-base-shaped layers, timed here independently."""
    import time

    from serve_app.engine.precision import BF16_MARGIN, choose_precision

    def step_time(dtype):  # two feed-forward layers of mT5-base at a decoding batch of 32 rows, with its nonlinearity
        layer = torch.nn.Sequential(
            torch.nn.Linear(768, 2048, bias=False), torch.nn.GELU(), torch.nn.Linear(2048, 768, bias=False)
        ).to(dtype)
        x = torch.randn(32, 768).to(dtype)
        with torch.inference_mode():
            layer(x)
            start = time.perf_counter()
            for _ in range(20):
                layer(x)
        return time.perf_counter() - start

    direct = min(step_time(torch.float32) for _ in range(3)) / min(step_time(torch.bfloat16) for _ in range(3))
    chosen = choose_precision("auto", torch.device("cpu"), _base_shape())
    if direct > 1.5 * BF16_MARGIN:
        assert chosen.dtype == torch.bfloat16, (direct, chosen.reason)
    elif direct < BF16_MARGIN / 1.5:
        assert chosen.dtype == torch.float32, (direct, chosen.reason)
    else:  # a near-tie (both within 1.5x of the margin): either choice is right, only the reason is checked
        assert "measured" in chosen.reason, (direct, chosen.reason)


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16), ((7, 5), torch.float32), ((7, 0), torch.float32)],
)
def test_auto_on_cuda_uses_bfloat16_only_where_the_gpu_runs_it_natively(capability, dtype):
    from serve_app.engine.precision import choose_precision

    never = lambda s: pytest.fail("a GPU is not probed by timing")  # noqa: E731
    chosen = choose_precision(
        "auto", torch.device("cuda"), _base_shape(), speedup=never, capability=lambda d: capability
    )
    assert chosen.dtype == dtype and f"compute capability {capability[0]}.{capability[1]}" in chosen.reason


def test_explicit_precisions_and_bad_ones():
    from serve_app.engine.precision import choose_precision

    never = lambda s: pytest.fail("an explicit dtype must not probe the hardware")  # noqa: E731
    cpu = torch.device("cpu")
    assert choose_precision("float32", cpu, _base_shape(), speedup=never).dtype == torch.float32
    assert choose_precision("bf16", cpu, _base_shape(), speedup=never).name == "bfloat16"
    int8 = choose_precision("int8", cpu, _base_shape(), speedup=never)
    assert int8.int8 and int8.name == "int8"
    with pytest.raises(ModelSpecError, match="CPU only"):
        choose_precision("int8", torch.device("cuda"), _base_shape())
    with pytest.raises(ModelSpecError, match="not one of"):
        choose_precision("float8", cpu, _base_shape())
    for fp16 in ("float16", "fp16"):
        with pytest.raises(ModelSpecError, match="overflow float16"):
            choose_precision(fp16, torch.device("cuda"), _base_shape())


def test_a_cuda_request_without_cuda_stops_with_the_fix():
    from serve_app.engine.loading import choose_device

    no_cuda = lambda: False  # noqa: E731
    for device, reserved in (("cuda", False), ("cuda:1", False), ("auto", True)):
        with pytest.raises(ModelSpecError, match="CUDA is not usable here") as refused:
            choose_device(device, gpu_reserved=reserved, cuda_available=no_cuda)
        assert "torch " in str(refused.value) and "device: cpu" in str(refused.value)
    assert choose_device("auto", cuda_available=no_cuda) == torch.device("cpu")
    assert choose_device("cpu", cuda_available=no_cuda) == torch.device("cpu")
    assert choose_device("cpu", gpu_reserved=True, cuda_available=no_cuda) == torch.device("cpu")  # said on purpose
    assert choose_device("cuda:1", cuda_available=lambda: True) == torch.device("cuda:1")


def test_bfloat16_and_int8_engines_score_and_generate_close_to_float32(demo_model):
    """Reduced precision changes numbers a little, never the shape of answers; probabilities stay close on the demo
    model."""
    tok = demo_model.tokenizer
    prompt = ids(tok, "文本分类。\n候选标签：天气,美食,旅游。\n文本内容：今天阳光明媚")
    request = ScoringRequest(prompt, label_ids(tok, ["天气", "美食", "旅游"]))
    reference = Seq2SeqEngine(demo_model.model).score([request])[0].probabilities
    for dtype in ("bfloat16", "int8"):
        loaded = load_model("demo", device="cpu", dtype=dtype)
        assert loaded.describe()["dtype"] == dtype
        engine = Seq2SeqEngine(loaded.model)
        result = engine.score([request])[0]
        assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert result.probabilities == pytest.approx(reference, abs=0.05)
        generated = engine.generate(
            [GenerationRequest(prompt, SamplingParams(num_return_sequences=2, max_new_tokens=5, seed=3))]
        )[0]
        assert len(generated) == 2 and all(len(seq) <= 5 for seq in generated)
        label_tokens = engine.score([ScoringRequest(prompt, request.label_ids, normalization="label_tokens")])[0]
        assert label_tokens.probabilities == pytest.approx(
            Seq2SeqEngine(demo_model.model)
            .score([ScoringRequest(prompt, request.label_ids, normalization="label_tokens")])[0]
            .probabilities,
            abs=0.05,
        )


# ------------------------------------------------------------------ sampling
def _draw(logits: torch.Tensor, params: SamplingParams, step: int = 0) -> int:
    """One row's next token, as a decoding step picks it."""
    from serve_app.engine.sampling import RowSampling, RowTensors, StepPlan, sample_next_tokens

    row = [RowSampling.for_sequence(params, 0)]
    tensors = RowTensors.build(row, logits.shape[1], logits.device)
    tensors.step += step
    return int(sample_next_tokens(logits, StepPlan.of(row, logits.shape[1]), tensors))


def test_nearly_tied_logits_swapping_ranks_do_not_change_a_seeded_draw():
    """Batch shape can reorder two logits that differ in the last bits; each keeps its own noise (by token id)."""
    torch.manual_seed(0)
    base = torch.randn(1, 500)
    first, second = base[0].topk(2).indices.tolist()
    base[0, second] = base[0, first] - 1e-6  # the two best, a hair apart
    swapped = base.clone()
    swapped[0, first], swapped[0, second] = base[0, first] - 2e-6, base[0, first] - 1e-6 + 1e-6  # their order flips
    for top_k in (2, 50, 0):
        differing = 0
        for seed in range(200):
            params = SamplingParams(temperature=1.0, top_k=top_k, top_p=1.0, seed=seed)
            differing += int(_draw(base, params) != _draw(swapped, params))
        assert differing <= 2, (top_k, differing)  # only where the perturbed scores themselves nearly tie


def test_a_swap_at_the_top_k_edge_changes_no_other_candidate():
    """Tokens k and k+1 trade places: a draw that is neither of them stays the same token (noise is keyed by token
    id)."""
    torch.manual_seed(1)
    k = 10
    base = torch.randn(1, 400)
    order = base[0].argsort(descending=True).tolist()
    inside, outside = order[k - 1], order[k]
    base[0, outside] = base[0, inside] - 1e-4
    swapped = base.clone()
    swapped[0, inside], swapped[0, outside] = base[0, outside], base[0, inside]
    compared = 0
    for seed in range(300):
        params = SamplingParams(temperature=1.5, top_k=k, top_p=1.0, seed=seed)
        one, two = _draw(base, params), _draw(swapped, params)
        if {one, two}.isdisjoint({inside, outside}):
            assert one == two, seed
            compared += 1
    assert compared > 200  # the swapped pair rarely wins; everything else was compared


def test_seeded_noise_samples_the_softmax():
    """Keyed noise is still Gumbel: over many seeds the draws follow softmax(logits / T), top-k and top-p applied."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0, -9.0]])
    draws = 6000

    def frequencies(**knobs):
        counts = torch.zeros(6)
        for seed in range(draws):
            counts[_draw(logits, SamplingParams(seed=seed, **knobs), step=seed % 7)] += 1
        return counts / draws

    full = torch.softmax(logits[0] / 1.5, dim=0)
    assert frequencies(temperature=1.5, top_k=0, top_p=1.0) == pytest.approx(full.tolist(), abs=0.02)
    top3 = torch.softmax(logits[0, :3], dim=0).tolist() + [0.0] * 3
    assert frequencies(temperature=1.0, top_k=3, top_p=1.0) == pytest.approx(top3, abs=0.02)
    nucleus = frequencies(temperature=1.0, top_k=0, top_p=0.7)  # 0.64 + 0.24 reach 0.7: the first two only
    assert nucleus[2:].sum() == 0 and nucleus[0] == pytest.approx(0.64 / 0.88, abs=0.02)


def test_a_row_draws_by_its_own_step_not_the_batch():
    """The same seed at different steps draws differently; the same (seed, step) draws the same, whoever is around."""
    from serve_app.engine.sampling import RowSampling, RowTensors, StepPlan, sample_next_tokens

    torch.manual_seed(2)
    logits = torch.randn(4, 300)
    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=7)
    alone = [_draw(logits[2:3], params, step) for step in range(6)]
    assert len(set(alone)) > 1
    rows = [
        RowSampling.for_sequence(SamplingParams(temperature=t, top_k=k, seed=s), 0)
        for t, k, s in ((0.0, 50, 1), (0.7, 0, 2), (1.0, 50, 7), (1.3, 5, 3))
    ]
    tensors = RowTensors.build(rows, 300, logits.device)
    tensors.step += torch.tensor([9, 0, 0, 4])
    for step in range(6):
        batched = sample_next_tokens(logits, StepPlan.of(rows, 300), tensors)
        assert int(batched[2]) == alone[step] and int(batched[0]) == int(logits[0].argmax())
        tensors.step += 1


class HostRoundTrips(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts what a step asks of the host: scalars read back (item, int, bool), lists read back, tensors built from
    lists."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = self.uploads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tensor, self._tolist = torch.tensor, torch.Tensor.tolist

        def counted_tensor(data, *args, **kwargs):
            if isinstance(data, (list, tuple)):
                self.uploads += 1
            return self._tensor(data, *args, **kwargs)

        def counted_tolist(tensor):
            self.reads += 1
            return self._tolist(tensor)

        torch.tensor, torch.Tensor.tolist = counted_tensor, counted_tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.tensor, torch.Tensor.tolist = self._tensor, self._tolist
        return super().__exit__(*exc)


def test_a_decoding_step_reads_back_only_its_chosen_tokens(demo_model):
    """Per step: one read-back (the chosen tokens); an upload only on a step where rows finish (the rows that fill the
    holes)."""
    engine = Seq2SeqEngine(demo_model.model)
    tok = demo_model.tokenizer
    requests = [
        GenerationRequest(
            ids(tok, "今天天气很好"), SamplingParams(num_return_sequences=2, max_new_tokens=40, temperature=0.0)
        ),
        GenerationRequest(
            ids(tok, "这家店的菜很好吃"),
            SamplingParams(num_return_sequences=3, max_new_tokens=40, temperature=0.9, top_k=50, top_p=0.9, seed=3),
        ),
        GenerationRequest(
            ids(tok, "物流"),
            SamplingParams(num_return_sequences=2, max_new_tokens=8, temperature=1.2, top_k=0, top_p=0.8, seed=4),
        ),
    ]
    batch = engine.new_batch()
    batch.merge(engine.prefill(requests))
    engine.step(batch)  # the first step reserves the time axis
    checked_quiet = 0
    while batch.rows:
        rows_before = batch.rows
        with HostRoundTrips() as trips:
            finished = engine.step(batch)
        assert trips.reads == 1, (trips.reads, batch.length)
        if finished and batch.rows and len(finished) < rows_before:
            assert trips.uploads <= 1
        else:
            assert trips.uploads == 0
            checked_quiet += 1
    assert checked_quiet >= 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "vocab", [250_112, 70_001]
)  # mT5's vocabulary (whole groups), and one with a partial last group
def test_top_k_selects_what_torch_topk_selects(dtype: torch.dtype, vocab: int) -> None:
    """The grouped top-k gives torch.topk's values, best first, from distinct columns holding them."""
    from serve_app.engine.vocabulary import GROUP_COLUMNS, top_k

    generator = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(6, vocab, generator=generator) * 4).to(dtype)  # bfloat16: many equal values near the cut
    logits[1, -1] = 100.0  # the best value in the last, partial group (or the last whole one)
    logits[2, : 3 * GROUP_COLUMNS] = 50.0  # the best values all in a few groups, tied
    logits[3] = -torch.inf
    logits[3, 12345] = 0.0
    for k in (1, 50, 97):
        expected, _ = logits.topk(k, dim=-1)
        values, columns = top_k(logits, k)
        assert torch.equal(values, expected), k
        assert torch.equal(logits.gather(1, columns), values), k
        assert all(len(set(row)) == k for row in columns.tolist()), k
    assert top_k(logits, 1)[1][1].item() == vocab - 1
    assert top_k(logits, 1)[1][3].item() == 12345


def test_top_k_of_a_narrow_row_is_torch_topk() -> None:
    from serve_app.engine.vocabulary import top_k

    logits = torch.randn(3, 4000)
    assert all(torch.equal(a, b) for a, b in zip(top_k(logits, 50), logits.topk(50, dim=-1), strict=True))


def test_labels_sharing_prefixes_score_as_if_decoded_alone(demo_model, monkeypatch):
    """The prefix tree: shared first tokens, a label that is a prefix of another, the same label twice, a tree spilling
    into a second row."""
    from serve_app.engine import scoring

    engine = Seq2SeqEngine(demo_model.model)
    tok = demo_model.tokenizer
    labels = [tok(label).input_ids[:-1] for label in ["物流", "物流延迟", "物流太慢", "售后", "售后响应慢", "天气"]]
    labels.append(labels[1])
    request = ScoringRequest(tok("文本分类。\n候选标签：物流,售后。\n文本内容：快递三天还没到").input_ids, labels)
    engine.packed_scoring = False
    reference = engine.score([request])[0]
    engine.packed_scoring = True
    rows = scoring.pack_rows([labels], 0, 1)
    assert len(rows.tokens) == 1 and len(rows.tokens[0]) < 1 + sum(len(label) for label in labels)
    for width in (scoring.MAX_PACKED_WIDTH, 8):  # 8: the tree spills into further rows of the same input
        monkeypatch.setattr(scoring, "MAX_PACKED_WIDTH", width)
        monkeypatch.setattr(scoring.pack_rows, "__defaults__", (True, width))
        got = engine.score([request])[0]
        assert got.log_scores == pytest.approx(reference.log_scores, abs=1e-5)
        assert got.log_scores[1] == got.log_scores[-1]  # the same label twice: the same path, the same score
    assert len(scoring.pack_rows([labels], 0, 1, max_width=8).tokens) > 1


def test_packed_and_bucketed_scoring_equal_per_label_rows(demo_model):
    """Labels packed into shared decoder rows and inputs encoded in length buckets score as one row per label does."""
    engine = Seq2SeqEngine(demo_model.model)
    tok = demo_model.tokenizer
    texts = ["今天阳光明媚", "股市今天大幅上涨,银行板块领涨,成交量明显放大,投资者情绪高涨", "物流太慢了"]
    label_sets = [["天气", "美食"], ["财经", "体育", "科技", "新能源汽车"], ["物流延迟", "商品缺货", "售后响应慢"]]
    requests = [
        ScoringRequest(tok(text * (1 + i)).input_ids, [tok(label).input_ids[:-1] for label in labels])
        for i, (text, labels) in enumerate(zip(texts * 3, label_sets * 3, strict=True))
    ]
    engine.packed_scoring, engine.bucket_overhead_tokens = False, None
    reference = engine.score(requests)
    for packed, overhead in ((True, None), (False, 1), (True, 1), (True, 64)):
        engine.packed_scoring, engine.bucket_overhead_tokens = packed, overhead
        for got, want in zip(engine.score(requests), reference, strict=True):
            assert got.log_scores == pytest.approx(want.log_scores, abs=1e-4)
            assert got.probabilities == pytest.approx(want.probabilities, abs=1e-5)
