"""The seed article's worked examples on the real model, through the service.

Runs only where real weights are at hand: `MT5_REAL_WEIGHTS=/path/to/nlp_mt5_zero-shot-augment_chinese-base
pytest -m real_weights`. Without them every test here is skipped with that reason (they are not counted).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import service

pytestmark = [pytest.mark.service, pytest.mark.real_weights]

WEIGHTS = os.environ.get("MT5_REAL_WEIGHTS", "")
SCENARIO_TEXT = "等了三天还没发货,客服也不回消息"
SCENARIO_LABELS = ["物流延迟", "商品缺货", "售后响应慢", "价格争议"]
TASK_INPUTS = {
    "sentiment": {"text": "这家餐厅的菜很好吃,服务也周到"},
    "keywords": {"text": "新能源汽车的续航里程越来越长,充电桩也越来越多"},
    "title": {"text": "今天上午,市政府召开新闻发布会,宣布将新建三条地铁线路,预计五年内建成通车。"},
    "summary": {"text": "今天上午,市政府召开新闻发布会,宣布将新建三条地铁线路,预计五年内建成通车,以缓解城市交通压力。"},
    "opinion_target": {"text": "颐和园的风景真美"},
    "translation": {"text": "今天天气很好"},
    "question_generation": {"passage": "长城是中国古代的军事防御工程,全长两万多公里。", "answer": "两万多公里"},
}


def _real_weights_dir() -> Path | None:
    path = Path(WEIGHTS).expanduser() if WEIGHTS else None
    if (
        path
        and (path / "config.json").is_file()
        and any((path / name).is_file() for name in ("pytorch_model.bin", "model.safetensors"))
    ):
        return path
    return None


@pytest.fixture(scope="module")
def real_service(tmp_path_factory) -> Iterator[str]:
    path = _real_weights_dir()
    if path is None:
        pytest.skip(
            "no real weights: set MT5_REAL_WEIGHTS to a local copy of iic/nlp_mt5_zero-shot-augment_chinese-base"
        )
    with service(tmp_path_factory.mktemp("real"), env={"MT5_MODEL": str(path)}, timeout_s=600) as run:
        yield run.url


def test_seed_scenario_5_1_classifies_as_the_article_says(real_service):
    body = httpx.post(
        f"{real_service}/classify", json={"text": SCENARIO_TEXT, "labels": SCENARIO_LABELS}, timeout=120
    ).json()
    assert body["label"] == "物流延迟", body


def test_answers_stay_inside_the_candidates_and_repeat_exactly(real_service):
    answers = set()
    with httpx.Client(timeout=120) as client:
        for _ in range(100):
            body = client.post(
                f"{real_service}/classify", json={"text": SCENARIO_TEXT, "labels": SCENARIO_LABELS}
            ).json()
            assert body["label"] in SCENARIO_LABELS
            answers.add((body["label"], tuple(body["labels"])))
    assert len(answers) == 1


@pytest.mark.parametrize("task", sorted(TASK_INPUTS))
def test_each_model_card_task_answers_in_its_format(real_service, task):
    body = httpx.post(
        f"{real_service}/generate", json={"task": task, **TASK_INPUTS[task], "max_length": 64}, timeout=120
    ).json()
    assert body["task"] == task and body["text"].strip(), body
    if task == "sentiment":
        assert any(word in body["text"] for word in ("积极", "消极", "中性", "正面", "负面")), body
