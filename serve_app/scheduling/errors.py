"""What the scheduler tells a caller it will not serve (torch-free: the ingress maps it to HTTP 503 + Retry-After)."""

from __future__ import annotations

import math
from typing import Any


class Refused(RuntimeError):
    """A request the scheduler will not serve now, by design: answer 503, retry after `retry_after_s`."""

    @property
    def retry_after_s(self) -> int:
        return 1


class AdmissionRefused(Refused):
    """The request could not start before its deadline at the measured drain rate."""

    def __init__(self, expected_wait_s: float, deadline_s: float) -> None:
        super().__init__(
            f"the model is busy: this request would wait about {expected_wait_s:.0f} s to start, "
            f"longer than the {deadline_s:.0f} s request deadline"
        )
        self.expected_wait_s = expected_wait_s
        self.deadline_s = deadline_s

    @property
    def retry_after_s(self) -> int:
        """When a retry has a fair chance: once the work ahead of it beyond the deadline has drained."""
        return max(1, min(60, math.ceil(self.expected_wait_s - self.deadline_s)))

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across Ray processes
        return (AdmissionRefused, (self.expected_wait_s, self.deadline_s))


class OutOfMemoryRefused(Refused):
    """The device ran out of memory with this request in the batch; it was the newest, so it left and the rest went
    on."""

    def __init__(self, rows: int) -> None:
        super().__init__(f"the model ran out of memory with this request's {rows} row(s) in its batch; retry shortly")
        self.rows = rows

    def __reduce__(self) -> tuple[Any, ...]:
        return (OutOfMemoryRefused, (self.rows,))
