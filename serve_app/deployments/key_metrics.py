"""Per-key Prometheus metrics of the Ingress (through Ray): requests by route and status, tokens, labels scored.

The `key` tag is the caller's name (a named key's, `default` for the single unnamed key, `anonymous` with auth
off), never the key. The route tag is the route's template, so a job id does not make a series of its own.
"""

from __future__ import annotations

import re

from ray.serve.metrics import Counter

ROUTES = ("/augment", "/augment_batch", "/classify", "/classify_batch", "/generate", "/tasks", "/jobs")
JOB_ROUTE = re.compile(r"^/jobs/[^/]+(/result|/errors)?$")


class KeyMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "mt5_key_requests",
            description="Requests per API key, by route and HTTP status",
            tag_keys=("key", "route", "status"),  # type: ignore[arg-type]  # Ray annotates tag_keys as a 1-tuple
        )
        self.generated_tokens = Counter(
            "mt5_key_generated_tokens", description="Tokens generated for each API key's requests", tag_keys=("key",)
        )
        self.labels_scored = Counter(
            "mt5_key_labels_scored",
            description="Candidate labels scored for each API key's requests (texts x labels)",
            tag_keys=("key",),
        )

    @staticmethod
    def route_of(path: str) -> str:
        if path in ROUTES:
            return path
        match = JOB_ROUTE.match(path)
        if match:
            return "/jobs/{id}" + (match.group(1) or "")
        return "other"

    def request(self, key: str, route: str, status: int) -> None:
        self.requests.inc(tags={"key": key, "route": route, "status": str(status)})

    def generated(self, key: str, tokens: int) -> None:
        if tokens > 0:
            self.generated_tokens.inc(tokens, tags={"key": key})

    def scored(self, key: str, labels: int) -> None:
        if labels > 0:
            self.labels_scored.inc(labels, tags={"key": key})
