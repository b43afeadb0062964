"""The Grafana dashboard (cluster/grafana/mt5-dashboard.json), built here so panels stay uniform.

Ray exports every metric with a "ray_" prefix: ModelReplica's mt5_step_rows histogram
becomes ray_mt5_step_rows_bucket/_sum/_count, counters get "_total". Serve's own
metrics (ray_serve_*) give per-route traffic and replica counts. Rewrite the JSON
with `python -m cluster.render`.
"""

from __future__ import annotations

import re
from typing import Any

RATE = "$__rate_interval"
APP = 'application=~"$application"'
NOT_HEALTH = 'route!~"/-/.*"'  # the proxies' own health/routes probes
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _target(expr: str, legend: str, ref: str, fmt: str | None = None) -> dict[str, Any]:
    target = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}
    if fmt:
        target["format"] = fmt
    return target


def _panel(
    title: str, description: str, targets: list[tuple[str, str]], unit: str, kind: str = "timeseries"
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi"},
        },
    }


def _quantiles(metric: str, by: str, qs: tuple[float, ...] = (0.5, 0.99)) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum(rate({metric}_bucket{{{APP}}}[{RATE}])) by ({by}, le))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in qs
    ]


def _heatmap(title: str, description: str, metric: str, unit: str) -> dict[str, Any]:
    panel = _panel(title, description, [], unit, kind="heatmap")
    panel["targets"] = [
        _target(f"sum(increase({metric}_bucket{{{APP}}}[{RATE}])) by (le)", "{{le}}", "A", fmt="heatmap")
    ]
    panel["options"] = {
        "calculate": False,
        "yAxis": {"unit": unit},
        "color": {"scheme": "Oranges", "mode": "scheme"},
        "cellGap": 1,
    }
    return panel


def panels() -> list[dict[str, Any]]:
    """Rows of two: the scheduler, model throughput, HTTP per route, replicas."""
    return [
        _heatmap(
            "Live rows per decoding step",
            "Decoder rows (one per returned sequence) in each step of ModelReplica's continuous-batching scheduler. "
            "Mostly small under load means requests are not meeting in the batch.",
            "ray_mt5_step_rows",
            "short",
        ),
        _panel(
            "Rows per step and requests per scoring batch",
            "Mean live rows per decoding step, and mean requests per scoring batch (classify).",
            [
                (
                    f"sum(rate(ray_mt5_step_rows_sum{{{APP}}}[{RATE}])) / "
                    f"sum(rate(ray_mt5_step_rows_count{{{APP}}}[{RATE}]))",
                    "rows per step",
                ),
                (
                    f"sum(rate(ray_mt5_score_batch_size_sum{{{APP}}}[{RATE}])) / "
                    f"sum(rate(ray_mt5_score_batch_size_count{{{APP}}}[{RATE}]))",
                    "requests per scoring batch",
                ),
            ],
            "short",
        ),
        _panel(
            "Step and scoring-batch time",
            "Time of one decoding step (every live row gets one token) and of one scoring batch.",
            [*_quantiles("ray_mt5_step_seconds", "application"), *_quantiles("ray_mt5_score_seconds", "application")],
            "s",
        ),
        _panel(
            "Prefill tokens per iteration",
            "Prompt tokens encoded per scheduler iteration (bounded by user_config.max_prefill_tokens).",
            _quantiles("ray_mt5_prefill_tokens", "application", (0.5, 0.9)),
            "short",
        ),
        _panel(
            "Queue wait before start",
            "How long a request waited in the scheduler before it joined the running batch (generate) or a scoring "
            "batch (score).",
            _quantiles("ray_mt5_queue_wait_seconds", "kind"),
            "s",
        ),
        _panel(
            "Requests admitted and finished / s",
            "Requests that started per second (by kind) and that the scheduler answered; live rows and queued requests "
            "now.",
            [
                (f"sum(rate(ray_mt5_requests_admitted_total{{{APP}}}[{RATE}])) by (kind)", "admitted {{kind}}"),
                (f"sum(rate(ray_mt5_requests_finished_total{{{APP}}}[{RATE}]))", "finished"),
                (f"sum(ray_mt5_live_rows{{{APP}}})", "live rows"),
                (f"sum(ray_mt5_waiting_requests{{{APP}}})", "waiting requests"),
            ],
            "short",
        ),
        _panel(
            "Generated tokens / s",
            "Decoder tokens produced by all ModelReplica replicas.",
            [
                (f"sum(rate(ray_mt5_generated_tokens_total{{{APP}}}[{RATE}]))", "tokens/s"),
                (f"sum(rate(ray_mt5_generated_tokens_total{{{APP}}}[{RATE}])) by (replica)", "{{replica}}"),
            ],
            "short",
        ),
        _panel(
            "Requests / s per route",
            "HTTP requests through the Serve proxies on every node, by route and status.",
            [
                (
                    f"sum(rate(ray_serve_num_http_requests_total{{{APP},{NOT_HEALTH}}}[{RATE}])) by (route, "
                    "status_code)",
                    "{{route}} {{status_code}}",
                )
            ],
            "reqps",
        ),
        _panel(
            "Latency per route",
            "End-to-end latency at the Serve proxy (excludes the load balancer).",
            [
                (
                    f"histogram_quantile({q}, sum(rate("
                    f"ray_serve_http_request_latency_ms_bucket{{{APP},{NOT_HEALTH}}}[{RATE}])) by (route, le))",
                    f"p{int(q * 100)} {{{{route}}}}",
                )
                for q in (0.5, 0.9, 0.99)
            ],
            "ms",
        ),
        _panel(
            "Errors per route",
            "4xx and 5xx answers by route and code: 422 bad input, 413 body too large, 503 overload, 504 timeout, 500 "
            "a bug or a lost replica.",
            [
                (
                    f"sum(increase(ray_serve_num_http_error_requests_total{{{APP},{NOT_HEALTH}}}[{RATE}])) by (route, "
                    "error_code)",
                    "{{route}} {{error_code}}",
                )
            ],
            "short",
        ),
        _panel(
            "Replicas per deployment",
            "Healthy replicas (solid) against the autoscaler's target (the number it is moving towards).",
            [
                (f"sum(ray_serve_deployment_replica_healthy{{{APP}}}) by (deployment)", "{{deployment}}"),
                (f"max(ray_serve_autoscaling_target_replicas{{{APP}}}) by (deployment)", "{{deployment}} target"),
            ],
            "short",
        ),
        _panel(
            "Queued requests per deployment",
            "Requests waiting in callers' routers for a replica slot (max_ongoing_requests is full). Sustained > 0 "
            "means add replicas.",
            [(f"sum(ray_serve_deployment_queued_queries{{{APP}}}) by (deployment)", "{{deployment}}")],
            "short",
        ),
        _panel(
            "Requests per API key",
            "Requests per second by key (a named key's name, default for the single key, anonymous with auth off) "
            "and status; 429 = the key is over a limit (README, API keys).",
            [(f"sum(rate(ray_mt5_key_requests_total{{{APP}}}[{RATE}])) by (key, status)", "{{key}} {{status}}")],
            "reqps",
        ),
        _panel(
            "Model work per API key",
            "Tokens generated and candidate labels scored per second, by key: what each team costs.",
            [
                (f"sum(rate(ray_mt5_key_generated_tokens_total{{{APP}}}[{RATE}])) by (key)", "{{key}} tokens"),
                (f"sum(rate(ray_mt5_key_labels_scored_total{{{APP}}}[{RATE}])) by (key)", "{{key}} labels"),
            ],
            "short",
        ),
        _panel(
            "Classification cache",
            "/classify answers from the cache (hit) and from the model (miss), per second.",
            [(f"sum(rate(ray_mt5_classification_cache_total{{{APP}}}[{RATE}])) by (result)", "{{result}}")],
            "short",
        ),
        _panel(
            "GPU utilization per node",
            "From Ray's node metrics; empty on clusters without GPUs.",
            [("avg(ray_node_gpus_utilization) by (instance, GpuIndex)", "{{instance}} GPU {{GpuIndex}}")],
            "percent",
        ),
    ]


def build_dashboard() -> dict[str, Any]:
    laid_out = []
    for index, panel in enumerate(panels()):
        laid_out.append(
            {"id": index + 1, "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)}, **panel}
        )
    return {
        "title": "mT5 zero-shot service",
        "uid": "mt5-serve",
        "description": "Batching, model throughput, HTTP per route and replica counts of the mT5 Ray Serve app.",
        "tags": ["ray", "serve", "mt5"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                {
                    "name": "application",
                    "label": "Serve application",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(ray_serve_deployment_replica_healthy, application)",
                        "refId": "application",
                    },
                    "definition": "label_values(ray_serve_deployment_replica_healthy, application)",
                    "current": {"text": "mt5", "value": "mt5"},
                    "refresh": 2,
                    "includeAll": False,
                },
            ]
        },
        "panels": laid_out,
    }


def metric_names(dashboard: dict[str, Any]) -> set[str]:
    """Every metric a dashboard's queries read (for tests that check they exist)."""
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\b(ray_[a-z0-9_]+)", target["expr"]))
    return names
