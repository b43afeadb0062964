"""The input file the bulk tests read: 2,000 lines of customer messages, some malformed, one blank."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

from serve_app.bulk.records import Record

BIN = Path(sys.executable).parent
MT5_BULK = BIN / "mt5-bulk"
LABELS = ["物流延迟", "商品缺货", "质量问题", "服务态度", "其他"]
LABELS_ARG = "物流延迟,商品缺货，质量问题,服务态度,其他"  # one full-width comma on purpose
AUGMENT_ARGS = ["--num", "3", "--max-length", "8", "--seed", "11"]
TOTAL_LINES = 2000

# ----------------------------------------------------------------------------- input data

_TEMPLATES = [
    "我的快递{n}天了还没到，请帮忙查一下物流。",
    "这款{item}什么时候补货？已经缺货一周了。",
    "收到的{item}有划痕，质量太差了。",
    "客服回复很及时，{item}也很好用。",
    "订单{n}号显示已发货，但物流信息一直没有更新。",
    "想问一下{item}有没有优惠活动？",
    "{item}用了{n}天就坏了，申请退货。",
]
_ITEMS = ["耳机", "保温杯", "运动鞋", "台灯", "背包", "电饭煲"]

# line number -> (raw line, expected reason fragment); everything else is a good record
MALFORMED: dict[int, tuple[bytes, str]] = {
    17: ('{"id": "r17", "text": "没有结尾的引号'.encode(), "invalid JSON"),
    250: (b'{"id": "r250"}', "missing field 'text'"),
    503: (b'{"id": "r503", "text": ""}', "is empty"),
    777: (b'{"id": "r777", "text": 42}', "must be a string"),
    1001: ('["不是", "对象"]'.encode(), "expected a JSON object"),
    1500: (b'{"id": "r1500", "text": "   "}', "is empty"),
    1999: (b'{"id": "r1999", "text": "\xe5\xbf\xab\xff"}', "not valid UTF-8"),
}
BLANK_LINES = {1200}  # not records at all, but they still count for line numbers


def sentence(line: int) -> str:
    rng = random.Random(line)
    return rng.choice(_TEMPLATES).format(n=rng.randint(1, 30), item=rng.choice(_ITEMS))


def _record_id(line: int) -> Any:
    return line if line % 100 == 0 else f"r{line}"  # every 100th record has no id: its line number is the id


def write_jsonl(path: Path, lines: int = TOTAL_LINES) -> list[Record]:
    """The test input; returns the good records it holds, in order."""
    raw, good = [], []
    for line in range(1, lines + 1):
        if line in MALFORMED:
            raw.append(MALFORMED[line][0])
        elif line in BLANK_LINES:
            raw.append(b"")
        else:
            obj: dict[str, Any] = {"text": sentence(line), "source": "test"}
            if line % 100:
                obj = {"id": _record_id(line), **obj}
            raw.append(json.dumps(obj, ensure_ascii=False).encode())
            good.append(Record(line, _record_id(line), obj["text"]))
    path.write_bytes(b"\n".join(raw) + b"\n")
    return good


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
