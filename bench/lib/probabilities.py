"""The fidelity set and how two sets of label probabilities are compared."""

from __future__ import annotations

import random

from bench.lib.workloads import chinese_texts

LABEL_POOL = [
    "体育",
    "财经",
    "科技",
    "娱乐",
    "教育",
    "健康",
    "物流延迟",
    "商品缺货",
    "售后响应慢",
    "价格争议",
    "天气",
    "美食",
    "旅游",
    "汽车",
    "房产",
    "游戏",
    "军事",
    "文化",
    "农业",
    "法律",
    "积极",
    "消极",
    "中性",
    "其他",
]


def classify_inputs(count: int, seed: int = 11) -> list[tuple[str, list[str]]]:
    """`count` Chinese texts, each with 2-8 candidate labels drawn from LABEL_POOL."""
    rng = random.Random(seed)
    return [(text, rng.sample(LABEL_POOL, rng.randint(2, 8))) for text in chinese_texts(count, seed=seed)]


def compare(reference: list[list[float]], other: list[list[float]]) -> dict[str, float]:
    """Largest and mean change of a label probability, and the share of inputs whose top label is the same."""
    deltas = [abs(a - b) for ref, oth in zip(reference, other, strict=True) for a, b in zip(ref, oth, strict=True)]
    agree = sum(
        max(range(len(r)), key=r.__getitem__) == max(range(len(o)), key=o.__getitem__)
        for r, o in zip(reference, other, strict=True)
    )
    return {
        "max_abs_dp": max(deltas),
        "mean_abs_dp": sum(deltas) / len(deltas),
        "top_label_agreement": agree / len(reference),
    }


def transformers_probabilities(model, requests) -> list[list[float]]:
    """Label probabilities from transformers' own forward pass, one label at a time (teacher-forced after the
    decoder start token, each token normalised over the full vocabulary): another correct float32 kernel order
    than the engine's, which on random weights says how far rounding alone moves a probability."""
    import torch

    start = model.config.decoder_start_token_id
    eos = model.config.eos_token_id
    out = []
    with torch.inference_mode():
        for request in requests:
            scores = []
            for label in request.label_ids:
                decoder = torch.tensor([[start, *label]])
                logits = model(input_ids=torch.tensor([request.input_ids]), decoder_input_ids=decoder).logits[0]
                log_probs = torch.log_softmax(logits.float(), dim=-1)
                targets = torch.tensor([*label, eos])
                scores.append(float(log_probs[torch.arange(len(targets)), targets].sum()))
            out.append(torch.softmax(torch.tensor(scores), dim=0).tolist())
    return out
