"""What each named key has used, against its limits: requests in the last minute, generated tokens today (UTC).

One Usage for the whole application (the KeyLedger deployment holds it), so a limit holds across every Ingress
replica instead of once per replica. Requests are counted in a sliding window of the last 60 s: a key limited to
30 a minute gets its 31st request within any 60 s refused, and `retry_after_s` is when its oldest one leaves the
window. Generated tokens are charged after the answer (they are known only then): a request is refused once the
day's tokens reached the limit, so the request that crosses it still completes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from serve_app.access.keys import KeyLimits

WINDOW_S = 60.0
DAY_S = 86_400


@dataclass(frozen=True)
class Refusal:
    """Why a key is over its limit: the 429's body and Retry-After."""

    limit: str  # "requests_per_minute" | "generated_tokens_per_day"
    allowed: int
    retry_after_s: int

    @property
    def detail(self) -> str:
        if self.limit == "requests_per_minute":
            return f"API key over its limit of {self.allowed} requests per minute; retry in {self.retry_after_s} s"
        return (
            f"API key over its limit of {self.allowed} generated tokens per day (UTC); retry in {self.retry_after_s} s"
        )


@dataclass
class KeyUsage:
    recent: deque[float] = field(default_factory=deque)  # admission times within the window, oldest first
    day: int = -1  # the UTC day `tokens` counts
    tokens: int = 0


class Usage:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # wall-clock seconds: the token day is a calendar day (UTC)
        self.keys: dict[str, KeyUsage] = {}

    def admit(self, name: str, limits: KeyLimits, generates: bool = True) -> Refusal | None:
        """Count one request of `name` now, or say which limit refuses it (a refused request is not counted).

        `generates`: the request may generate tokens; only such a request is refused for the day's tokens, so a
        key over its budget can still read its jobs and their results."""
        now = self.clock()
        usage = self.keys.setdefault(name, KeyUsage())
        self._roll_day(usage, now)
        per_day = limits.generated_tokens_per_day
        if generates and per_day is not None and usage.tokens >= per_day:
            midnight = (math.floor(now / DAY_S) + 1) * DAY_S
            return Refusal("generated_tokens_per_day", per_day, max(1, math.ceil(midnight - now)))
        per_minute = limits.requests_per_minute
        while usage.recent and usage.recent[0] <= now - WINDOW_S:
            usage.recent.popleft()
        if per_minute is not None and len(usage.recent) >= per_minute:
            return Refusal("requests_per_minute", per_minute, max(1, math.ceil(usage.recent[0] + WINDOW_S - now)))
        if per_minute is not None:
            usage.recent.append(now)
        return None

    def charge(self, name: str, tokens: int) -> None:
        """Add generated tokens to `name`'s day."""
        if tokens <= 0:
            return
        usage = self.keys.setdefault(name, KeyUsage())
        self._roll_day(usage, self.clock())
        usage.tokens += tokens

    def tokens_today(self, name: str) -> int:
        usage = self.keys.get(name)
        if usage is None:
            return 0
        self._roll_day(usage, self.clock())
        return usage.tokens

    @staticmethod
    def _roll_day(usage: KeyUsage, now: float) -> None:
        day = int(now // DAY_S)
        if day != usage.day:
            usage.day, usage.tokens = day, 0
