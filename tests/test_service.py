"""The Serve application, started for real from config.yaml, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.settings import AppSettings
from tests.answers import assert_same_classification
from tests.servers import CONFIG

LABEL_SETS = [
    ["天气", "美食", "旅游"],
    ["物流延迟", "商品缺货", "售后响应慢", "价格争议"],
    ["积极", "消极"],
    ["体育", "财经", "科技", "娱乐", "教育"],
]
TEXTS = [
    "今天阳光明媚,适合去西湖边散步",
    "等了三天还没发货,客服也不回消息",
    "这款手机充电很快,但电池掉电也快",
    "中国女排在比赛中以三比零战胜对手",
    "股市今天大幅上涨,银行板块领涨",
    "这家面馆的牛肉面味道一般,价格有点贵",
    "新能源汽车的续航里程越来越长",
    "高考成绩公布,考生可以在网上查询",
]


@pytest.fixture(scope="module")
def client(base_url: str):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


# ------------------------------------------------------------------ shapes
@pytest.mark.service
def test_healthz_reports_the_demo_model_and_its_precision(client):
    body = client.get("/healthz").json()
    # the fixture pins MT5_DTYPE=float32 (conftest.py); what `auto` picks is checked in test_bench_smoke and test_engine
    assert body == {
        "status": "ok",
        "model": "demo",
        "demo": True,
        "device": "cpu",
        "dtype": "float32",
        "dtype_reason": "float32 (requested)",
    }


@pytest.mark.service
def test_classify_score_shape(client):
    labels = ["天气", "美食", "旅游"]
    body = client.post("/classify", json={"text": TEXTS[0], "labels": labels}).json()
    assert set(body) == {"sequence", "label", "labels", "scores", "truncated"}
    assert body["sequence"] == TEXTS[0] and body["truncated"] is False
    assert body["label"] == body["labels"][0] and sorted(body["labels"]) == sorted(labels)
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert sum(body["scores"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.service
def test_classify_generate_shape(client):
    body = client.post("/classify", json={"text": TEXTS[0], "labels": ["天气", "美食"], "mode": "generate"}).json()
    assert set(body) == {"sequence", "label", "generated", "truncated"}
    assert isinstance(body["generated"], str)
    assert body["label"] in (None, "天气", "美食")


@pytest.mark.service
def test_classify_batch_keeps_order(client):
    texts = TEXTS[:5]
    body = client.post("/classify_batch", json={"texts": texts, "labels": LABEL_SETS[1]}).json()
    assert [result["sequence"] for result in body["results"]] == texts
    for text, result in zip(texts, body["results"], strict=True):
        alone = client.post("/classify", json={"text": text, "labels": LABEL_SETS[1]}).json()
        assert_same_classification(result, alone)


@pytest.mark.service
def test_augment_shape_and_limits(client):
    body = client.post(
        "/augment",
        json={"text": "这家餐厅的服务态度很好,上菜速度也快", "num_return_sequences": 3, "max_length": 12, "seed": 7},
    ).json()
    assert set(body) == {"augmented_texts", "truncated"}
    texts = body["augmented_texts"]
    assert 1 <= len(texts) <= 3 and len(set(texts)) == len(texts)
    assert "这家餐厅的服务态度很好,上菜速度也快" not in texts


@pytest.mark.service
def test_seeded_augment_repeats_even_under_concurrent_load(client, base_url):
    request = {"text": "物流太慢了,等了三天还没发货", "num_return_sequences": 3, "max_length": 10, "seed": 2024}
    first = client.post("/augment", json=request).json()

    async def with_background_traffic():
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as aclient:
            noise = [
                aclient.post(
                    "/augment", json={"text": text, "num_return_sequences": 2, "max_length": 8, "temperature": 1.3}
                )
                for text in TEXTS
            ] + [aclient.post("/classify", json={"text": text, "labels": LABEL_SETS[0]}) for text in TEXTS]
            results = await asyncio.gather(aclient.post("/augment", json=request), *noise)
            assert all(response.status_code == 200 for response in results)
            return results[0].json()

    assert asyncio.run(with_background_traffic()) == first
    assert client.post("/augment", json={**request, "seed": 2025}).json() != first


@pytest.mark.service
def test_augment_whose_every_sample_ends_at_once_answers_an_empty_list(client):
    """A sample may draw </s> first: a batch that generated no token at all is a normal answer, not a 500."""
    from serve_app.engine import GenerationRequest, SamplingParams
    from serve_app.pipeline import Pipeline
    from serve_app.text import augmentation
    from serve_app.text.prompts import Template

    text = "这款手机充电很快,但电池掉电也快"
    pipeline = Pipeline.from_args({"model": "demo", "device": "cpu", "dtype": "float32"})  # as the fixture runs it
    prompt = augmentation.prepare_paraphrase(pipeline.encoder, Template(pipeline.settings.templates.augment), text)
    # Find, in process, a seed whose only sample is empty (</s> is among the demo's top-50 first tokens).
    seeds = range(0, 20_000, 64)
    empty_seed = None
    for start in seeds:
        batch = [
            SamplingParams(num_return_sequences=1, max_new_tokens=2, seed=seed) for seed in range(start, start + 64)
        ]
        outputs = pipeline.engine.generate([GenerationRequest(prompt.input_ids, params) for params in batch])
        empty = [params.seed for params, output in zip(batch, outputs, strict=True) if output == [[]]]
        if empty:
            empty_seed = empty[0]
            break
    assert empty_seed is not None, "no seed in 0..20000 draws </s> first"
    response = client.post(
        "/augment", json={"text": text, "num_return_sequences": 1, "max_length": 2, "seed": empty_seed}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"augmented_texts": [], "truncated": False}


@pytest.mark.service
def test_augment_batch_keeps_order_and_length(client):
    texts = ["物流太慢了", "商品包装破损", "客服回复及时", "这款游戏的画面很精美"]
    params = {"num_return_sequences": 2, "max_length": 8, "seed": 11}
    body = client.post("/augment_batch", json={"texts": texts, **params}).json()
    assert set(body) == {"augmented_texts", "truncated"}
    assert len(body["augmented_texts"]) == len(texts) and body["truncated"] == [False] * 4
    for text, batch_answer in zip(texts, body["augmented_texts"], strict=True):
        assert batch_answer == client.post("/augment", json={"text": text, **params}).json()["augmented_texts"]


@pytest.mark.service
def test_augment_batch_with_one_seed_per_text_equals_each_text_alone(client):
    texts = ["物流太慢了", "商品包装破损", "物流太慢了"]  # the same text twice, with different seeds
    seeds = [3, 2**63 - 1, 4]
    params = {"num_return_sequences": 3, "max_length": 8, "temperature": 1.5, "top_k": 0, "top_p": 1.0}
    body = client.post("/augment_batch", json={"texts": texts, "seeds": seeds, **params}).json()
    alone = [
        client.post("/augment", json={"text": text, "seed": seed, **params}).json()["augmented_texts"]
        for text, seed in zip(texts, seeds, strict=True)
    ]
    assert body["augmented_texts"] == alone
    assert alone[0] != alone[2]  # the seed, not the text, decides the draw
    assert client.post("/augment_batch", json={"texts": texts, "seeds": seeds, **params}).json() == body


@pytest.mark.service
def test_generate_tasks_and_raw_prompt(client):
    tasks = {task["name"]: task for task in client.get("/tasks").json()["tasks"]}
    assert {"sentiment", "keywords", "title", "summary", "opinion_target", "translation", "question_generation"} <= set(
        tasks
    )
    assert tasks["question_generation"]["fields"] == ["passage", "answer"]
    body = client.post(
        "/generate", json={"task": "summary", "text": "学校开学后,学生们开始了新的学期。", "max_length": 8}
    ).json()
    assert set(body) == {"text", "task", "truncated"} and body["task"] == "summary" and isinstance(body["text"], str)
    qg = client.post(
        "/generate",
        json={
            "task": "question_generation",
            "passage": "长城是中国古代的军事防御工程。",
            "answer": "长城",
            "max_length": 6,
        },
    )
    assert qg.status_code == 200
    raw = client.post("/generate", json={"prompt": "翻译成英文：今天天气很好", "max_length": 6})
    assert raw.status_code == 200 and raw.json()["task"] is None
    # greedy by default: same prompt, same text
    assert client.post("/generate", json={"prompt": "翻译成英文：今天天气很好", "max_length": 6}).json() == raw.json()


@pytest.mark.service
def test_docs_openapi_and_ui(client):
    spec = client.get("/openapi.json").json()
    assert {"/augment", "/augment_batch", "/classify", "/classify_batch", "/generate", "/healthz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


# ------------------------------------------------------------------ batching
@pytest.mark.service
def test_concurrent_classify_requests_are_batched_and_match_solo_answers(client, base_url, served):
    requests = [
        {"text": f"{TEXTS[i % len(TEXTS)]}{'!' * (i // len(TEXTS))}", "labels": LABEL_SETS[i % len(LABEL_SETS)]}
        for i in range(32)
    ]
    log_before = served.log_path.read_text(errors="replace")

    async def all_at_once():
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as aclient:
            return await asyncio.gather(*(aclient.post("/classify", json=body) for body in requests))

    together = [response.json() for response in asyncio.run(all_at_once())]
    time.sleep(2)  # replica logs reach serve run's output asynchronously
    new_log = served.log_path.read_text(errors="replace")[len(log_before) :]
    # The scheduler logs a summary when it goes idle: 32 requests scored in fewer, larger batches.
    windows = re.findall(r"scored=(\d+) score_batches=(\d+) score_batch_max=(\d+)", new_log)
    scored = sum(int(w[0]) for w in windows)
    batches = sum(int(w[1]) for w in windows)
    assert scored >= 32 and max(int(w[2]) for w in windows) > 1 and batches < scored, (
        f"scheduler windows seen: {windows}"
    )

    for body, answer in zip(requests, together, strict=True):
        alone = client.post("/classify", json=body).json()
        assert answer["sequence"] == body["text"]
        assert_same_classification(answer, alone)


# ------------------------------------------------------------------ augmentation that keeps the label
KEEP_LABELS = LABEL_SETS[1]


def classify_alone(client, text: str, labels: list[str]) -> dict:
    response = client.post("/classify", json={"text": text, "labels": labels})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.service
def test_keep_label_returns_only_paraphrases_classify_puts_under_the_texts_label(client):
    from serve_app.text.label_keeping import ngram_distance

    text = TEXTS[1]
    request = {
        "text": text,
        "num_return_sequences": 4,
        "max_length": 16,
        "seed": 5,
        "min_distance": 0.3,
        "keep_label": {"labels": KEEP_LABELS},
    }
    body = client.post("/augment", json=request).json()
    own = classify_alone(client, text, KEEP_LABELS)
    assert body["label"] == own["label"]  # no label given: the text's own top label
    counts = body["candidates"]
    assert counts["max_candidates"] == 12 and counts["asked"] == 4  # the default budget: 3 x asked
    assert counts["kept"] == len(body["augmented_texts"]) == len(body["label_scores"]) >= 1
    assert counts["tried"] <= counts["max_candidates"]
    assert counts["kept"] + counts["repeated"] + counts["too_close"] + counts["other_label"] <= counts["tried"]
    if counts["kept"] < counts["asked"]:
        assert counts["tried"] == counts["max_candidates"]  # fewer than asked only when the budget ran out
    for paraphrase, probability in zip(body["augmented_texts"], body["label_scores"], strict=True):
        answer = classify_alone(client, paraphrase, KEEP_LABELS)
        assert answer["label"] == body["label"], (paraphrase, answer)
        assert abs(dict(zip(answer["labels"], answer["scores"], strict=True))[body["label"]] - probability) <= 1e-5
    kept = [text, *body["augmented_texts"]]
    assert all(ngram_distance(a, b) >= 0.3 for i, a in enumerate(kept) for b in kept[i + 1 :])
    assert client.post("/augment", json=request).json() == body  # seeded: the same kept texts


@pytest.mark.service
def test_keep_label_with_another_label_drops_candidates_and_says_so_within_budget(client):
    text = TEXTS[1]
    own = classify_alone(client, text, KEEP_LABELS)["label"]
    other = next(label for label in KEEP_LABELS if label != own)
    request = {
        "text": text,
        "num_return_sequences": 3,
        "max_length": 12,
        "seed": 9,
        "max_candidates": 5,
        "keep_label": {"labels": KEEP_LABELS, "label": other},
    }
    body = client.post("/augment", json=request).json()
    counts = body["candidates"]
    assert body["label"] == other and counts["max_candidates"] == 5 and counts["tried"] <= 5
    assert counts["kept"] == len(body["augmented_texts"])
    for paraphrase in body["augmented_texts"]:
        assert classify_alone(client, paraphrase, KEEP_LABELS)["label"] == other
    if counts["kept"] < 3:
        assert counts["tried"] == 5 and counts["other_label"] + counts["repeated"] >= 5 - counts["kept"]


@pytest.mark.service
def test_keep_label_batch_keeps_order_and_equals_each_text_alone(client):
    texts = [TEXTS[1], TEXTS[5], TEXTS[1]]
    seeds = [1, 2, 3]
    params = {"num_return_sequences": 2, "max_length": 10, "min_distance": 0.2, "keep_label": {"labels": KEEP_LABELS}}
    body = client.post("/augment_batch", json={"texts": texts, "seeds": seeds, **params}).json()
    assert len(body["augmented_texts"]) == len(body["label"]) == len(body["candidates"]) == 3
    for i, (text, seed) in enumerate(zip(texts, seeds, strict=True)):
        alone = client.post("/augment", json={"text": text, "seed": seed, **params}).json()
        assert [body["augmented_texts"][i], body["label"][i], body["candidates"][i]] == [
            alone["augmented_texts"],
            alone["label"],
            alone["candidates"],
        ]
        assert body["label_scores"][i] == pytest.approx(alone["label_scores"], abs=1e-5)


@pytest.mark.service
def test_min_distance_alone_oversamples_and_drops_near_copies(client):
    from serve_app.text.label_keeping import ngram_distance

    text = TEXTS[2]
    body = client.post(
        "/augment", json={"text": text, "num_return_sequences": 3, "max_length": 12, "seed": 4, "min_distance": 0.5}
    ).json()
    assert "label" not in body and body["candidates"]["max_candidates"] == 9 and body["candidates"]["other_label"] == 0
    kept = [text, *body["augmented_texts"]]
    assert all(ngram_distance(a, b) >= 0.5 for i, a in enumerate(kept) for b in kept[i + 1 :])


# ------------------------------------------------------------------ errors
ERROR_CASES = [
    ("/augment", {"text": "物流太慢了", "keep_label": {"labels": ["物流"]}}, "keep_label.labels"),
    ("/augment", {"text": "物流太慢了", "keep_label": {"label": "物流"}}, "keep_label.labels"),
    ("/augment", {"text": "物流太慢了", "keep_label": {"labels": ["物流", "物流"]}}, "keep_label.labels"),
    ("/augment", {"text": "物流太慢了", "num_return_sequences": 3, "max_candidates": 2}, "max_candidates"),
    ("/augment", {"text": "物流太慢了", "max_candidates": 51}, "max_candidates"),
    ("/augment", {"text": "物流太慢了", "min_distance": 1.5}, "min_distance"),
    (
        "/augment_batch",
        {"texts": ["物流太慢了"], "keep_label": {"labels": ["物流", "售后"], "lable": "物流"}},
        "keep_label.lable",
    ),
    ("/augment_batch", {"texts": ["一", "二"], "seeds": [1]}, "seeds"),
    ("/augment_batch", {"texts": ["一"], "seeds": [1], "seed": 1}, "seeds"),
    ("/augment_batch", {"texts": ["一", "二"], "seeds": [1, -1]}, "seeds.1"),
    ("/classify", {"text": "", "labels": ["a", "b"]}, "text"),
    ("/classify", {"text": "   ", "labels": ["a", "b"]}, "text"),
    ("/classify", {"text": "今天", "labels": ["a"]}, "labels"),
    ("/classify", {"text": "今天", "labels": [f"l{i}" for i in range(51)]}, "labels"),
    ("/classify", {"text": "今天", "labels": ["天气", "天气"]}, "labels"),
    ("/classify", {"text": "今天", "labels": ["天气", ""]}, "labels.1"),
    ("/classify", {"text": "今天", "labels": ["a", "b"], "mode": "vote"}, "mode"),
    ("/classify", {"labels": ["a", "b"]}, "text"),
    ("/classify_batch", {"texts": ["x"] * 51, "labels": ["a", "b"]}, "texts"),
    ("/classify_batch", {"texts": [], "labels": ["a", "b"]}, "texts"),
    ("/augment", {"text": "物流太慢了", "temperature": 3}, "temperature"),
    ("/augment", {"text": "物流太慢了", "top_p": 0}, "top_p"),
    ("/augment", {"text": "物流太慢了", "num_return_sequences": 11}, "num_return_sequences"),
    ("/augment", {"text": "物流太慢了", "num_return_sequences": "2"}, "num_return_sequences"),
    ("/augment", {"text": "物流太慢了", "max_length": 513}, "max_length"),
    ("/augment", {"text": "物流太慢了", "top_k": -1}, "top_k"),
    ("/augment", {"text": "物流太慢了", "seed": -5}, "seed"),
    ("/augment", {"text": 12}, "text"),
    ("/augment", {}, "text"),
    ("/augment", {"text": "物流太慢了", "temprature": 1}, "temprature"),
    ("/augment_batch", {"texts": ["x"] * 51}, "texts"),
    ("/augment_batch", {"texts": ["ok", " "]}, "texts"),
    ("/generate", {"task": "summary"}, "text"),
    ("/generate", {"task": "poetry", "text": "x"}, "task"),
    ("/generate", {"text": "x"}, "body"),
]


@pytest.mark.parametrize(("path", "body", "field"), ERROR_CASES)
@pytest.mark.service
def test_bad_fields_get_422_naming_the_field(client, path, body, field):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert field in [error["field"] for error in detail], detail
    assert all(error["msg"] for error in detail)


@pytest.mark.service
def test_invalid_json_is_422(client):
    response = client.post(
        "/classify", content=b'{"text": "x", "labels": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.service
def test_body_over_one_mebibyte_is_413(client):
    body = json.dumps({"text": "长" * (1 << 20)}).encode()
    response = client.post("/augment", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "exceeds" in response.json()["detail"]


@pytest.mark.service
def test_chunked_body_over_one_mebibyte_is_413(client):
    def chunks():
        yield b'{"text": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = client.post("/augment", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.service
def test_unknown_path_is_404(client):
    assert client.post("/nope", json={}).status_code == 404
    assert client.get("/no/such/page").status_code == 404


# ------------------------------------------------------------------ config
@pytest.mark.unit
def test_config_yaml_passes_serve_schema():
    config = yaml.safe_load(CONFIG.read_text())
    schema = (
        ServeDeploySchema.model_validate(config)
        if hasattr(ServeDeploySchema, "model_validate")
        else ServeDeploySchema.parse_obj(config)
    )
    app = schema.applications[0]
    assert app.import_path == "serve_app.app:build_app"
    assert config["http_options"]["port"] == 7860 and config["http_options"]["host"] == "0.0.0.0"
    by_name = {deployment.name: deployment for deployment in app.deployments}
    assert set(by_name) == {"ModelReplica", "Classifier", "Generator", "Ingress", "JobRunner", "KeyLedger"}
    replica = by_name["ModelReplica"]
    assert replica.max_ongoing_requests >= replica.user_config["max_batch_rows"]
    written = {deployment["name"]: deployment for deployment in config["applications"][0]["deployments"]}
    for name, deployment in written.items():
        if name in ("JobRunner", "KeyLedger"):  # one replica owns the running jobs, one counts every key's usage
            assert deployment["num_replicas"] == 1 and "autoscaling_config" not in deployment
        else:
            assert deployment["autoscaling_config"] and deployment["max_queued_requests"] > 0
    AppSettings.from_args(config["applications"][0]["args"], environ={})  # the args are valid settings


@pytest.mark.unit
def test_env_overrides_beat_the_file():
    args = yaml.safe_load(CONFIG.read_text())["applications"][0]["args"]
    settings = AppSettings.from_args(
        args, environ={"MT5_MODEL": "/models/mt5", "MT5_DEVICE": "cuda:1", "MT5_DTYPE": "bfloat16"}
    )
    assert (settings.model, settings.device, settings.dtype) == ("/models/mt5", "cuda:1", "bfloat16")
    assert AppSettings.from_args(args, environ={}).model == "iic/nlp_mt5_zero-shot-augment_chinese-base"
    assert AppSettings.from_args(args, environ={"MT5_JOBS_STORE": "s3://b/p"}).jobs.store == "s3://b/p"


@pytest.mark.service
def test_env_override_takes_effect_in_the_running_service(client):
    # The fixture runs the shipped config.yaml (model: the ModelScope id) with MT5_MODEL=demo in the environment.
    assert yaml.safe_load(CONFIG.read_text())["applications"][0]["args"]["model"] != "demo"
    assert client.get("/healthz").json()["model"] == "demo"


@pytest.mark.service
def test_light_deployments_run_at_lower_cpu_priority_than_the_model(served):
    """light_deployment_nice (10): on a shared CPU node the text deployments run in the model's gaps."""
    import os

    from bench.lib.processes import find_replica_pids

    root = served.process.pid
    model = find_replica_pids(root, "ServeReplica:mt5:ModelReplica")
    assert model
    base = os.getpriority(os.PRIO_PROCESS, model[0])
    for name in ("Ingress", "Classifier", "Generator"):
        pids = find_replica_pids(root, f"ServeReplica:mt5:{name}")
        assert pids and all(os.getpriority(os.PRIO_PROCESS, pid) == min(base + 10, 19) for pid in pids), name


@pytest.mark.service
def test_light_deployments_hold_no_torch(served, client):
    """Ingress, Classifier and Generator tokenize without torch (engine/tokenizer.py): no libtorch mapped
    in their processes, and each far below the ModelReplica's memory (figures in BENCHMARKS.md)."""
    from tests.servers import replica_processes

    assert (
        client.post("/classify", json={"text": TEXTS[0], "labels": LABEL_SETS[0]}).status_code == 200
    )  # every deployment is up
    model = replica_processes(served, "ModelReplica")[0]
    assert any("libtorch" in m.path for m in model.memory_maps())
    resident = {}
    for name in ("Ingress", "Classifier", "Generator"):
        for proc in replica_processes(served, name):
            assert not [m.path for m in proc.memory_maps() if "libtorch" in m.path], name
            resident[name] = proc.memory_info().rss
    print(
        "resident MiB:",
        {name: round(rss / 2**20) for name, rss in resident.items()},
        "ModelReplica:",
        round(model.memory_info().rss / 2**20),
    )
    assert set(resident) == {"Ingress", "Classifier", "Generator"}


@pytest.mark.service
def test_cors_is_off_by_default(base_url):
    """The shipped config.yaml allows no other origin (the guarded service allows one: tests/test_security.py)."""
    response = httpx.post(
        f"{base_url}/classify",
        json={"text": "等了三天还没发货", "labels": ["物流延迟", "商品缺货"]},
        headers={"Origin": "http://anywhere.example"},
        timeout=60,
    )
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
