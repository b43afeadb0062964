"""The two benchmark workloads: request bodies, the same for both systems, deterministic from a seed.

classify: six labels, Chinese texts of 20-80 characters.
augment: the same texts, num_return_sequences 2, max_length 32 (new tokens).
mixed: one classify client while eight augment clients (2 x 64 new tokens) run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

LABELS = ["体育", "财经", "科技", "娱乐", "教育", "健康"]

# Sentences by topic; texts are made by joining them and cutting to a random length.
SENTENCES = [
    "主队在下半场连进两球,最终逆转取得了比赛的胜利",
    "这名年轻的短跑运动员刷新了全国青年纪录",
    "球迷们在体育场外排起长队等待入场观看决赛",
    "马拉松比赛将于下周日早上七点在市中心鸣枪起跑",
    "央行宣布下调存款准备金率,释放长期资金约五千亿元",
    "受消息面影响,今天沪深两市成交额明显放大",
    "多家银行调整了个人住房贷款利率的定价方式",
    "这家公司的季度营收同比增长了百分之二十",
    "研究团队发布了新一代的人工智能大模型",
    "这款手机采用了新的芯片,续航能力提升明显",
    "国产操作系统的用户数量在过去一年快速增长",
    "科学家利用量子计算机完成了一项复杂的模拟实验",
    "这部电影上映三天票房就突破了十亿元",
    "歌手在演唱会上演唱了多首经典老歌,现场气氛热烈",
    "新一季综艺节目邀请了多位知名演员参加",
    "导演透露续集已经开始筹备,预计明年开拍",
    "教育部发布通知,要求减轻中小学生的课业负担",
    "今年高考报名人数再创新高,考生超过一千万",
    "学校新建了图书馆和实验室,方便学生开展课外学习",
    "不少家长开始关注孩子的阅读习惯和心理健康",
    "医生提醒,冬季要注意保暖,预防流感等呼吸道疾病",
    "适量运动和均衡饮食有助于控制血压和血糖",
    "研究发现长期熬夜会增加心脏病的风险",
    "社区医院开设了免费体检服务,受到居民欢迎",
]


@dataclass(frozen=True)
class Workload:
    name: str  # "classify" or "augment"
    route: str
    bodies: list[dict[str, Any]]

    def body(self, index: int) -> dict[str, Any]:
        """The index-th request: the bodies in turn, each round's texts marked with the round, so no text is sent
        twice (a repeated /classify would be answered by the service's classification cache, not the model)."""
        body = self.bodies[index % len(self.bodies)]
        rounds = index // len(self.bodies)
        if rounds == 0 or "text" not in body:
            return body
        return {**body, "text": f"{body['text']}（{rounds}）"}


def chinese_texts(count: int, seed: int = 0, min_chars: int = 20, max_chars: int = 80) -> list[str]:
    """`count` texts of min_chars..max_chars characters, built from the topic sentences."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        target = rng.randint(min_chars, max_chars)
        text = ""
        while len(text) < target:
            text += rng.choice(SENTENCES) + "。"
        texts.append(text[:target].rstrip("。,") or text[:target])
    return texts


def classify_workload(count: int = 256, seed: int = 0, labels: list[str] | None = None) -> Workload:
    labels = list(labels or LABELS)
    return Workload("classify", "/classify", [{"text": text, "labels": labels} for text in chinese_texts(count, seed)])


def augment_workload(
    count: int = 256, seed: int = 1, num_return_sequences: int = 2, max_length: int = 32, name: str = "augment"
) -> Workload:
    return Workload(
        name,
        "/augment",
        [
            {"text": text, "num_return_sequences": num_return_sequences, "max_length": max_length}
            for text in chinese_texts(count, seed)
        ],
    )


def mixed_workload(
    classify_clients: int = 1, augment_clients: int = 8, max_length: int = 64
) -> list[tuple[Workload, int]]:
    """Short scoring requests among long generations: what continuous batching must keep fast."""
    classify = classify_workload(seed=2)
    classify = Workload("mixed:classify", classify.route, classify.bodies)
    augment = augment_workload(seed=3, num_return_sequences=2, max_length=max_length, name="mixed:augment")
    return [(classify, classify_clients), (augment, augment_clients)]


WORKLOADS = {"classify": classify_workload, "augment": augment_workload}
