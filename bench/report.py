"""Write benchmark results: json + csv + png under bench/results/, and a section of BENCHMARKS.md."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

# Issue 11's targets, at the highest concurrency measured (32 clients), ratios from one run.
AUGMENT_X_BASELINE = 8.0  # /augment requests/s against the one-at-a-time baseline
SERVING_SHARE = {"augment": 0.85, "classify": 0.75}  # Serve's requests/s over the engine-only ceiling, same work
MIXED_CLASSIFY_LIMIT = 3.0  # /classify p95 among 8 augment clients, over the lone /classify p50
LONE_LATENCY_LIMIT = 1.1  # at 1 client, our p50 over the baseline's
CSV_FIELDS = [
    "system", "workload", "concurrency", "rps", "rps_spread", "p50_s", "p95_s", "p99_s", "mean_s", "max_s",
    "little_latency_s", "ok", "errors", "sent", "in_flight_at_end", "oldest_in_flight_s", "duration_s", "warmup_s", "peak_rss_mb", "model_cpu_cores", "system_cpu_cores", "client_cpu_cores", "load_average",
]


def throughput(point: dict[str, Any]) -> float:
    """Throughput with each answer spread over its lifetime (loadgen.PointResult.rps_spread); answers/s for old results."""
    return point.get("rps_spread", point["rps"])


def _point(points: list[dict[str, Any]], system: str, workload: str, concurrency: int) -> dict[str, Any] | None:
    for point in points:
        if point["system"] == system and point["workload"] == workload and point["concurrency"] == concurrency:
            return point
    return None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue-11 target: what was asked, what was measured, met or not (None: not measured)."""
    points = results["points"]
    targets: list[dict[str, Any]] = []

    def add(target: str, measured: str | None, met: bool | None) -> None:
        targets.append({"target": target, "measured": measured or "not measured", "met": met})

    levels = sorted({p["concurrency"] for p in points if p["workload"] in ("classify", "augment") and p["system"] != "engine"})
    top, low = (levels[-1], levels[0]) if levels else (None, None)
    ours, base = _point(points, "serve", "augment", top), _point(points, "baseline", "augment", top)
    if ours and base and throughput(base) > 0:
        ratio = throughput(ours) / throughput(base)
        add(
            f"augment: requests/s at {top} clients >= {AUGMENT_X_BASELINE:g}x baseline, no errors",
            f"{ratio:.1f}x ({throughput(ours):.2f} vs {throughput(base):.2f} req/s), {ours['errors']} errors",
            ratio >= AUGMENT_X_BASELINE and ours["errors"] == 0,
        )
    for workload, share in SERVING_SHARE.items():
        ours, engine = _point(points, "serve", workload, top), _point(points, "engine", workload, top)
        if ours and engine and throughput(engine) > 0:
            add(
                f"{workload}: Serve at {top} clients >= {share:.0%} of the engine-only ceiling (batch {top})",
                f"{throughput(ours) / throughput(engine):.0%} ({throughput(ours):.2f} vs {throughput(engine):.2f} req/s)",
                throughput(ours) / throughput(engine) >= share,
            )
    def latency_ratio(target: str, ours: dict | None, ours_key: str, theirs: dict | None, limit: float) -> None:
        """A latency target: ours[ours_key] over their p50, at most `limit`."""
        if ours and theirs and ours[ours_key] is not None and theirs["p50_s"]:
            ratio = ours[ours_key] / theirs["p50_s"]
            detail = f"{ratio:.2f}x ({ours_key[:3]} {ours[ours_key]:.2f} s vs p50 {theirs['p50_s']:.2f} s)"
            add(target, detail, ratio <= limit)

    latency_ratio(
        f"mixed: /classify p95 while 8 augment clients run <= {MIXED_CLASSIFY_LIMIT:g}x lone /classify p50",
        _point(points, "serve", "mixed:classify", 1), "p95_s", _point(points, "serve", "classify", 1), MIXED_CLASSIFY_LIMIT,
    )
    for workload in ("classify", "augment"):
        latency_ratio(
            f"{workload}: a lone request's latency <= {LONE_LATENCY_LIMIT:g}x the baseline's (p50, {low} client)",
            _point(points, "serve", workload, low), "p50_s", _point(points, "baseline", workload, low), LONE_LATENCY_LIMIT,
        )
    serve = results.get("systems", {}).get("serve", {})
    weights_mb = results.get("checkpoint", {}).get("weights_mb")
    if serve.get("replica_peak_rss_mb") and weights_mb:
        peak = serve["replica_peak_rss_mb"]
        add(
            "one copy of the weights per replica (ModelReplica peak RSS < 2x the weights)",
            f"{peak:.0f} MiB peak RSS for {weights_mb:.0f} MiB of weights, {serve.get('replicas', 1)} replica(s)",
            peak < 2 * weights_mb,
        )
    return targets


def write_files(results: dict[str, Any], out_dir: Path, stem: str = "bench") -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "csv": out_dir / f"{stem}.csv", "png": out_dir / f"{stem}.png"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False))
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for point in results["points"]:
            writer.writerow(point)
    plot(results, paths["png"])
    return paths


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in results["points"] if p["workload"] in ("classify", "augment")]
    workloads = list(dict.fromkeys(p["workload"] for p in points))
    systems = [system for system in dict.fromkeys(p["system"] for p in points) if system != "engine"]
    fig, axes = plt.subplots(len(workloads), 2, figsize=(10, 3.6 * len(workloads)), squeeze=False)
    styles = {"baseline": dict(color="tab:gray", marker="o", linestyle="--"), "serve": dict(color="tab:blue", marker="s")}
    for row, workload in enumerate(workloads):
        for system in systems:
            series = sorted((p for p in points if p["workload"] == workload and p["system"] == system), key=lambda p: p["concurrency"])
            xs = [p["concurrency"] for p in series]
            label = {"baseline": "baseline (transformers generate, fp32, 1 at a time)", "serve": "Ray Serve app"}.get(system, system)
            axes[row][0].plot(xs, [throughput(p) for p in series], label=label, **styles.get(system, {}))
            p95 = [(p["concurrency"], p["p95_s"]) for p in series if p["p95_s"] is not None]
            axes[row][1].plot([x for x, _ in p95], [y for _, y in p95], label=label, **styles.get(system, {}))
        engine = next((p for p in points if p["workload"] == workload and p["system"] == "engine"), None)
        if engine:
            axes[row][0].axhline(throughput(engine), color="tab:green", linestyle=":", label=f"engine-only ceiling (batch {engine['concurrency']})")
        for column, (title, unit) in enumerate((("throughput", "requests/s"), ("p95 latency", "seconds"))):
            ax = axes[row][column]
            ax.set_title(f"{workload}: {title}")
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(unit)
            ax.set_xscale("log", base=2)
            levels = sorted({p["concurrency"] for p in points if p["workload"] == workload and p["system"] != "engine"})
            ax.set_xticks(levels, [str(level) for level in levels])
            if column == 1:
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.suptitle(f"{results.get('title', 'benchmark')} — {results.get('date', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any], image: str | None = None) -> str:
    """The run's section for BENCHMARKS.md."""
    points = results["points"]
    machine = results.get("machine", {})
    lines = [
        f"Run of {results.get('date', '?')} on {machine.get('description', '?')}.",
        "",
        f"Command: `{results.get('command', '')}`",
        "",
        f"Checkpoint: {results.get('checkpoint', {}).get('description', '')}",
        "",
    ]
    for system, info in results.get("systems", {}).items():
        lines.append(f"- **{system}**: {info.get('description', '')}")
    lines += [
        "",
        f"Closed loop; per point {results['config']['warmup_s']:g} s warm-up then {results['config']['duration_s']:g} s measured (classify), "
        f"{results['config'].get('augment_warmup_s', results['config']['warmup_s']):g} s + {results['config'].get('augment_duration_s', results['config']['duration_s']):g} s (augment); "
        "req/s counts each answer (HTTP 200) as 1 spread evenly over its lifetime and sums the shares inside the measured window "
        "(clients that finish together answer in bursts, and whole answers in a window would quantise throughput by a burst); "
        "answers/s counts whole answers inside the window; latencies are over those answers; "
        "N/X is clients / throughput (Little's law: the mean latency a closed loop settles at, "
        "which the measured percentiles undershoot when one round of the queue takes longer than the window); "
        "CPU cores = CPU time per second of the point, out of the machine's 2: model = the model process (baseline server; "
        "Serve's ModelReplica worker), all = every process of that system (for Serve: proxy, Ingress, Classifier, Augmenter, "
        "controller, Ray); the rest went to the load generator and to whatever else ran on the shared box; "
        "load = the machine's 1-minute load average at the end of the point (2.0 = both cores busy).",
        "",
        "| workload | clients | system | req/s | answers/s | p50 s | p95 s | p99 s | N/X s | answers | errors | peak RSS MiB | CPU cores: model / all | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"baseline": 0, "serve": 1, "engine": 2}
    for point in sorted(points, key=lambda p: (p["workload"] != "classify", p["workload"], p["concurrency"], order.get(p["system"], 9))):
        lines.append(
            f"| {point['workload']} | {point['concurrency']} | {point['system']} | {_fmt(throughput(point))} | {_fmt(point['rps'])} | {_fmt(point['p50_s'])} | "
            f"{_fmt(point['p95_s'])} | {_fmt(point['p99_s'])} | {_fmt(point['little_latency_s'], 1)} | {point['ok']} | {point['errors']} | "
            f"{_fmt(point.get('peak_rss_mb'), 0)} | {_fmt(point.get('model_cpu_cores'), 1)} / {_fmt(point.get('system_cpu_cores'), 1)} | {_fmt(point.get('load_average'), 1)} |"
        )
    ratios = []
    for workload in dict.fromkeys(p["workload"] for p in points):
        for level in sorted({p["concurrency"] for p in points if p["workload"] == workload}):
            ours, base = _point(points, "serve", workload, level), _point(points, "baseline", workload, level)
            engine = _point(points, "engine", workload, level)
            if ours and base and throughput(base) > 0:
                p95 = f"{ours['p95_s'] / base['p95_s']:.2f}x" if ours["p95_s"] and base["p95_s"] else "–"
                share = f"{throughput(ours) / throughput(engine):.0%}" if engine and throughput(engine) > 0 else "–"
                ratios.append(f"| {workload} | {level} | {throughput(ours) / throughput(base):.1f}x | {p95} | {share} |")
    if ratios:
        lines += [
            "", "Serve / baseline (and Serve / engine-only ceiling at the same batch), same run:", "",
            "| workload | clients | throughput | p95 latency | of engine ceiling |", "|---|---:|---:|---:|---:|", *ratios,
        ]
    histograms = [p for p in points if p.get("rows_per_step")]
    if histograms:
        lines += ["", "Live decoder rows per decoding step, per point (steps in each bucket, from the scheduler's log):", "",
                  "| workload | clients | rows per step: steps |", "|---|---:|---|"]
        for point in histograms:
            buckets = ", ".join(f"{bucket}: {count}" for bucket, count in point["rows_per_step"].items())
            lines.append(f"| {point['workload']} | {point['concurrency']} | {buckets} |")
    targets = results.get("targets") or []
    if targets:
        lines += ["", "Targets (issue 11):", "", "| target | measured | met |", "|---|---|---|"]
        for target in targets:
            met = {True: "yes", False: "**no**", None: "not measured"}[target["met"]]
            lines.append(f"| {target['target']} | {target['measured']} | {met} |")
    notes = results.get("notes") or []
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    if image:
        lines += ["", f"![throughput and p95 against concurrency]({image})"]
    return "\n".join(lines) + "\n"


def update_section(md_path: Path, name: str, body: str, title: str) -> None:
    """Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`, or append the section."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = md_path.read_text() if md_path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n{block}\n"
    md_path.write_text(text)


def run_header(module: str, argv: list[str] | None) -> dict[str, Any]:
    """When, how and on what a bench module ran: the head of its results json (torch already configured)."""
    import datetime as dt
    import shlex
    import sys

    import torch

    from bench.run import machine_description
    from serve_app.engine.precision import cpu_has_amx

    given = argv if argv is not None else sys.argv[1:]
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": f".venv/bin/python -m {module}" + (" " + shlex.join(given) if given else ""),
        "machine": machine_description()["description"] + f"; torch reports AMX: {cpu_has_amx()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def save_results(results: dict[str, Any], out: Path, md_path: Path | None = None, section: str = "", body: str = "", title: str = "") -> None:
    """The results json at `out` and, unless md_path is None, their section of BENCHMARKS.md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    if md_path is not None:
        update_section(md_path, section, body, title)
