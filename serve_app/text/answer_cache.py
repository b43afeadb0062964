"""A bounded LRU of /classify answers in `score` mode: the same text, labels and scoring on the same model give the
same answer every time (label scores do not depend on the batch: README, "Precision and exactness"), so a dashboard that
refreshes or a dataset classified again need not pay the model twice.

An answer is kept as its JSON text and read back from it, so a hit is byte for byte what the miss answered and no
caller can change what the cache holds. The key holds everything that decides the answer: the model (its spec and
the checkpoint it resolved to), the precision it runs in, the classification template, the scoring, the labels as
sent (their order too) and the text. `mode: generate` and the sampled routes never come here.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

ENTRY_OVERHEAD_BYTES = 200  # the key's digest, the OrderedDict slot and the str object around the JSON text


def classification_key(model: str, template: str, scoring: str, labels: list[str], text: str) -> str:
    """The cache key: a SHA-256 over every input of the answer, unambiguous however the strings are cut."""
    parts = json.dumps([model, template, scoring, labels, text], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(parts.encode("utf-8")).hexdigest()


class AnswerCache:
    """At most `max_entries` answers and `max_bytes` of them; the least recently used leave first. 0 = off."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, str] = OrderedDict()
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def get(self, key: str) -> dict[str, Any] | None:
        text = self.entries.get(key)
        if text is None:
            return None
        self.entries.move_to_end(key)
        answer: dict[str, Any] = json.loads(text)
        return answer

    def put(self, key: str, answer: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
        size = self._size(text)
        if size > self.max_bytes:
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= self._size(old)
        self.entries[key] = text
        self.bytes += size
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= self._size(evicted)

    @staticmethod
    def _size(text: str) -> int:
        return len(text.encode("utf-8")) + ENTRY_OVERHEAD_BYTES

    def __len__(self) -> int:
        return len(self.entries)
