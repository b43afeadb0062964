"""OpenTelemetry traces of each request, off unless config.yaml's `otlp_endpoint` (or MT5_OTLP_ENDPOINT) names an
OTLP/HTTP collector.

One trace per HTTP request: the Ingress's span (continuing the client's W3C `traceparent` when it sends one),
the Classifier's or Generator's, one per call to a ModelReplica, and in the ModelReplica the request's wait in
its scheduler's queue and its prefill, decoding or scoring (timed by the scheduler thread, recorded when the
answer leaves), and each round of label-keeping augmentation. The context crosses deployment calls as a W3C
carrier (a dict with `traceparent`) passed with the call: Ray Serve's own tracing is not used (it does not
work in Ray 2.60).

Off, nothing of OpenTelemetry's SDK or exporter is imported and every function here is a cheap no-op, so the
layers can call it unconditionally. Each process (replica) starts its own exporter, batching spans off the
request path.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

logger = logging.getLogger("ray.serve")

SERVICE_NAME = "mt5-serve"
EXPORT_DELAY_MS = 500  # how long spans wait in a process before they are sent together

_tracer: Any = None  # an opentelemetry Tracer once start_tracing ran with an endpoint; None = tracing off
_provider: Any = None
Carrier = dict[str, str]


def start_tracing(endpoint: str | None, component: str) -> bool:
    """Export this process's spans to `endpoint` (OTLP over HTTP); no-op when None or already started."""
    global _tracer, _provider
    if not endpoint or _tracer is not None:
        return _tracer is not None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise RuntimeError(
            f"otlp_endpoint is set ({endpoint}) but OpenTelemetry's SDK is not installed here ({error.name}): "
            "pip install 'mt5-zero-shot-serve[tracing]' (or '.[tracing]' from a checkout) on every node"
        ) from None

    _provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME, "mt5.component": component}))
    _provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=EXPORT_DELAY_MS)
    )
    _tracer = _provider.get_tracer("serve_app")  # this provider, not the global one: Ray may own that
    logger.info("tracing: %s exports spans to %s", component, endpoint)
    return True


def use_tracer(tracer: Any) -> None:
    """Trace with `tracer` (an in-memory one in tests); None turns tracing off again."""
    global _tracer
    _tracer = tracer


def enabled() -> bool:
    return _tracer is not None


def flush() -> None:
    """Send what this process holds now (at shutdown, in tests)."""
    if _provider is not None:
        _provider.force_flush()


def span(name: str, **attributes: str | int | float | bool) -> contextlib.AbstractContextManager[Any]:
    """A span around a block, a child of the current one; a no-op when tracing is off."""
    if _tracer is None:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes)


def carrier() -> Carrier | None:
    """The current span's context for the next deployment call (W3C traceparent), or None when off."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject

    out: Carrier = {}
    inject(out)
    return out


@contextlib.contextmanager
def continued(incoming: Mapping[str, str] | None) -> Iterator[None]:
    """Within the block, spans continue the trace of `incoming` (a carrier, or HTTP headers with `traceparent`)."""
    if _tracer is None or not incoming:
        yield
        return
    from opentelemetry import context
    from opentelemetry.propagate import extract

    token = context.attach(extract(dict(incoming)))
    try:
        yield
    finally:
        context.detach(token)


def record(name: str, start_monotonic: float, end_monotonic: float, **attributes: str | int | float | bool) -> None:
    """A span that already happened (timed on another thread by time.monotonic), as a child of the current one."""
    if _tracer is None or end_monotonic < start_monotonic:
        return
    offset_ns = time.time_ns() - time.monotonic_ns()
    started = int(start_monotonic * 1e9) + offset_ns
    ended = int(end_monotonic * 1e9) + offset_ns
    _tracer.start_span(name, start_time=started, attributes=attributes).end(end_time=ended)
