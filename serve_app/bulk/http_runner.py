"""Model work on a running service: chunks go to /classify_batch or /augment_batch, a few at a time.

Answers come back in chunk order (a sliding window of futures), overload (503 and
friends) is retried after the server's Retry-After a bounded number of times, and a
422 for one text costs that text only. Anything else stops the job; a rerun resumes it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx

from serve_app.bulk.job import Chunk
from serve_app.bulk.records import Record
from serve_app.bulk.task import Outcome, TaskSpec
from serve_app.ingress.schemas import MAX_BATCH_TEXTS, AugmentChecks, SamplingFields

RETRY_STATUSES = {429, 502, 503, 504}
DEFAULT_CHUNK_RECORDS = 16
MAX_CHUNK_BYTES = 512 * 1024  # the service refuses bodies over 1 MiB; JSON escaping needs headroom


class ServiceError(RuntimeError):
    """The service failed in a way retrying did not fix: the job stops (and can be resumed)."""


class HttpRunner:
    def __init__(
        self,
        url: str,
        spec: TaskSpec,
        concurrency: int = 4,
        retries: int = 5,
        timeout_s: float = 300.0,
        max_wait_s: float = 60.0,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,  # tests put a fake service here
        priority: str = "background",  # bench jobs sends "interactive" to measure a bulk run sharing one queue
    ) -> None:
        self.url = url.rstrip("/")
        self.spec = spec
        self.concurrency = max(1, concurrency)
        self.retries = retries
        self.max_wait_s = max_wait_s
        self.client = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            # A bulk run is background work: the service answers interactive requests first (docs/http-api.md).
            headers={"X-MT5-Priority": priority, **({"Authorization": f"Bearer {api_key}"} if api_key else {})},
            transport=transport,
        )

    @property
    def max_chunk_records(self) -> int:
        return MAX_BATCH_TEXTS

    @property
    def default_chunk_records(self) -> int:
        # Each text becomes one ModelReplica request; chunks x the default concurrency (4) stay well inside the
        # replica's max_ongoing_requests (config.yaml), past which Serve's router backs off and throughput collapses.
        return min(DEFAULT_CHUNK_RECORDS, self.max_chunk_records)

    @property
    def max_chunk_bytes(self) -> int:
        return MAX_CHUNK_BYTES

    def __enter__(self) -> HttpRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()

    def check(self) -> dict[str, Any]:
        """The service's /healthz answer; fails fast with a clear message when the URL is wrong."""
        try:
            response = self.client.get("/healthz", timeout=10.0)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach {self.url}/healthz: {exc}") from exc
        if response.status_code != 200:
            raise ServiceError(f"{self.url}/healthz answered {response.status_code}: {response.text[:200]}")
        return response.json()

    def run(self, chunks: Sequence[Chunk]) -> Iterator[list[Outcome]]:
        if not chunks:
            return
        self.check()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="mt5-bulk-http")
        pending: deque[Future[list[Outcome]]] = deque()
        upcoming = iter(chunks)
        try:
            # Twice the concurrency queued, so the next request is ready while the oldest answer is written.
            for chunk in upcoming:
                pending.append(pool.submit(self._answer, chunk.records))
                if len(pending) >= 2 * self.concurrency:
                    break
            while pending:
                outcomes = pending.popleft().result()
                following = next(upcoming, None)
                if following is not None:
                    pending.append(pool.submit(self._answer, following.records))
                yield outcomes
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _answer(self, records: list[Record]) -> list[Outcome]:
        route, body = self._request(records)
        response = self._post(route, body)
        if response.status_code == 200:
            return self._outcomes(response.json())
        if response.status_code in (413, 422):
            if len(records) > 1:  # find the text the service refuses; the others still get answers
                return [outcome for record in records for outcome in self._answer([record])]
            return [Outcome(error=_refusal(response))]
        if response.status_code == 401:
            raise ServiceError(
                f"{self.url} wants an API key: set MT5_API_KEY or pass --api-key-file (the key it has is missing or "
                "wrong)"
            )
        raise ServiceError(f"{route} answered {response.status_code}: {response.text[:300]}")

    def _request(self, records: list[Record]) -> tuple[str, dict[str, Any]]:
        texts = [record.text for record in records]
        body: dict[str, Any]
        if self.spec.kind in ("classify", "evaluate"):
            mode = "score" if self.spec.kind == "evaluate" else self.spec.mode
            body = {"texts": texts, "labels": list(self.spec.labels), "mode": mode}
            if mode == "score":
                body["scoring"] = self.spec.scoring
            return "/classify_batch", body
        params = self.spec.sampling
        body = {"texts": texts, **SamplingFields.wire_fields(params)}
        if params.seed is not None:  # each record its own seed, whatever chunk it lands in
            body["seeds"] = [self.spec.record_params(record.line).seed for record in records]
        body.update(AugmentChecks.check_fields(self.spec.checks))
        return "/augment_batch", body

    def _outcomes(self, answer: dict[str, Any]) -> list[Outcome]:
        if self.spec.kind in ("classify", "evaluate"):
            return [Outcome(answer=result) for result in answer["results"]]
        columns = [
            key for key in ("augmented_texts", "truncated", "label", "label_scores", "candidates") if key in answer
        ]
        return [
            Outcome(answer=dict(zip(columns, values, strict=True)))
            for values in zip(*(answer[key] for key in columns), strict=True)
        ]

    def _post(self, route: str, body: dict[str, Any]) -> httpx.Response:
        """POST with retries on overload and dropped connections, waiting as the server asks."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.client.post(route, json=body)
            except httpx.TransportError as exc:
                if last:
                    raise ServiceError(
                        f"{route}: {type(exc).__name__}: {exc} (gave up after {self.retries} retries)"
                    ) from exc
                time.sleep(min(self.max_wait_s, 2.0**attempt))
                continue
            if response.status_code not in RETRY_STATUSES:
                return response
            if last:
                raise ServiceError(
                    f"{route} still answered {response.status_code} after {self.retries} retries: {response.text[:200]}"
                )
            time.sleep(_retry_after(response, default=2.0**attempt, cap=self.max_wait_s))
        raise AssertionError("unreachable")


def _retry_after(response: httpx.Response, default: float, cap: float) -> float:
    try:
        return min(cap, max(0.0, float(response.headers["retry-after"])))
    except (KeyError, ValueError):  # absent, or an HTTP date: fall back to exponential backoff
        return min(cap, default)


def _refusal(response: httpx.Response) -> str:
    """The service's reason for refusing one text, e.g. `text: must contain ...`."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list) and detail:
        return "; ".join(
            f"{_field(item.get('field', ''))}: {item.get('msg', '')}" for item in detail if isinstance(item, dict)
        )
    if isinstance(detail, str):
        return detail
    return f"HTTP {response.status_code}: {response.text[:200]}"


def _field(name: str) -> str:
    # A one-text request names the text `texts.0`; the record's field is `text`.
    return "text" + name[len("texts.0") :] if name.startswith("texts.0") else name
