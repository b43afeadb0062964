"""What the scheduler tells a caller it will not serve (torch-free: the ingress maps it to HTTP)."""

from __future__ import annotations

import math


class AdmissionRefused(RuntimeError):
    """The request could not start before its deadline at the measured drain rate: answer 503, retry later."""

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

    def __reduce__(self):  # pickled across Ray processes
        return (AdmissionRefused, (self.expected_wait_s, self.deadline_s))
