"""Write benchmark results: json + csv + png under bench/results/, and a section of BENCHMARKS.md."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

# Issue 5's targets on the 2-core CPU box, at the highest concurrency measured (32 clients).
THROUGHPUT_TARGETS = {"classify": 20.0, "augment": 8.0}
LOW_LOAD_LATENCY_LIMIT = 1.2  # at 1 client, our latency at most 1.2x the baseline's
CSV_FIELDS = [
    "system", "workload", "concurrency", "rps", "p50_s", "p95_s", "p99_s", "mean_s", "max_s",
    "little_latency_s", "ok", "errors", "sent", "in_flight_at_end", "oldest_in_flight_s", "duration_s", "warmup_s", "peak_rss_mb", "model_cpu_cores", "system_cpu_cores", "client_cpu_cores", "load_average",
]


def _point(points: list[dict[str, Any]], system: str, workload: str, concurrency: int) -> dict[str, Any] | None:
    for point in points:
        if point["system"] == system and point["workload"] == workload and point["concurrency"] == concurrency:
            return point
    return None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue-5 target: what was asked, what was measured, met or not (None: not measured)."""
    points = results["points"]
    targets: list[dict[str, Any]] = []
    workloads = sorted({p["workload"] for p in points}, key=lambda name: list(THROUGHPUT_TARGETS).index(name) if name in THROUGHPUT_TARGETS else 99)
    for workload in workloads:
        levels = sorted({p["concurrency"] for p in points if p["workload"] == workload})
        if not levels:
            continue
        top, low = levels[-1], levels[0]
        ours, base = _point(points, "serve", workload, top), _point(points, "baseline", workload, top)
        ratio_needed = THROUGHPUT_TARGETS.get(workload)
        if ratio_needed is not None:
            ratio = ours["rps"] / base["rps"] if ours and base and base["rps"] > 0 else None
            targets.append({
                "target": f"{workload}: requests/s at {top} clients >= {ratio_needed:g}x baseline",
                "measured": f"{ratio:.1f}x ({ours['rps']:.2f} vs {base['rps']:.2f} req/s)" if ratio is not None else "not measured",
                "met": None if ratio is None else ratio >= ratio_needed,
            })
            met = None
            text = "not measured"
            if ours and base and ours["p95_s"] is not None and base["p95_s"] is not None:
                met = ours["p95_s"] < base["p95_s"]
                text = f"{ours['p95_s']:.2f} s vs {base['p95_s']:.2f} s"
            targets.append({"target": f"{workload}: p95 at {top} clients below the baseline's", "measured": text, "met": met})
        ours, base = _point(points, "serve", workload, low), _point(points, "baseline", workload, low)
        met, text = None, "not measured"
        if ours and base and ours["p50_s"] is not None and base["p50_s"] is not None:
            ratio = ours["p50_s"] / base["p50_s"]
            met = ratio <= LOW_LOAD_LATENCY_LIMIT
            p95 = f"; p95 {ours['p95_s']:.2f} s vs {base['p95_s']:.2f} s" if ours["p95_s"] and base["p95_s"] else ""
            text = f"{ratio:.2f}x (p50 {ours['p50_s']:.2f} s vs {base['p50_s']:.2f} s{p95})"
        targets.append({"target": f"{workload}: latency at {low} client <= {LOW_LOAD_LATENCY_LIMIT:g}x baseline's (p50)", "measured": text, "met": met})
    serve = results.get("systems", {}).get("serve", {})
    weights_mb = results.get("checkpoint", {}).get("weights_mb")
    if serve.get("replica_peak_rss_mb") and weights_mb:
        peak = serve["replica_peak_rss_mb"]
        targets.append({
            "target": "one copy of the weights per replica (ModelReplica peak RSS < 2x the weights)",
            "measured": f"{peak:.0f} MiB peak RSS for {weights_mb:.0f} MiB of weights, {serve.get('replicas', 1)} replica(s)",
            "met": peak < 2 * weights_mb,
        })
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

    points = results["points"]
    workloads = list(dict.fromkeys(p["workload"] for p in points))
    systems = list(dict.fromkeys(p["system"] for p in points))
    fig, axes = plt.subplots(len(workloads), 2, figsize=(10, 3.6 * len(workloads)), squeeze=False)
    styles = {"baseline": dict(color="tab:gray", marker="o", linestyle="--"), "serve": dict(color="tab:blue", marker="s")}
    for row, workload in enumerate(workloads):
        for system in systems:
            series = sorted((p for p in points if p["workload"] == workload and p["system"] == system), key=lambda p: p["concurrency"])
            xs = [p["concurrency"] for p in series]
            label = {"baseline": "baseline (transformers generate, fp32, 1 at a time)", "serve": "Ray Serve app"}.get(system, system)
            axes[row][0].plot(xs, [p["rps"] for p in series], label=label, **styles.get(system, {}))
            p95 = [(p["concurrency"], p["p95_s"]) for p in series if p["p95_s"] is not None]
            axes[row][1].plot([x for x, _ in p95], [y for _, y in p95], label=label, **styles.get(system, {}))
        for column, (title, unit) in enumerate((("throughput", "requests/s"), ("p95 latency", "seconds"))):
            ax = axes[row][column]
            ax.set_title(f"{workload}: {title}")
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(unit)
            ax.set_xscale("log", base=2)
            levels = sorted({p["concurrency"] for p in points if p["workload"] == workload})
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
        "req/s counts answers (HTTP 200) inside the measured window; latencies are over those answers; "
        "N/X is clients / throughput (Little's law: the mean latency a closed loop settles at, "
        "which the measured percentiles undershoot when one round of the queue takes longer than the window); "
        "CPU cores = CPU time per second of the point, out of the machine's 2: model = the model process (baseline server; "
        "Serve's ModelReplica worker), all = every process of that system (for Serve: proxy, Ingress, Classifier, Augmenter, "
        "controller, Ray); the rest went to the load generator and to whatever else ran on the shared box; "
        "load = the machine's 1-minute load average at the end of the point (2.0 = both cores busy).",
        "",
        "| workload | clients | system | req/s | p50 s | p95 s | p99 s | N/X s | answers | errors | peak RSS MiB | CPU cores: model / all | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"baseline": 0, "serve": 1}
    for point in sorted(points, key=lambda p: (p["workload"] != "classify", p["workload"], p["concurrency"], order.get(p["system"], 9))):
        lines.append(
            f"| {point['workload']} | {point['concurrency']} | {point['system']} | {_fmt(point['rps'])} | {_fmt(point['p50_s'])} | "
            f"{_fmt(point['p95_s'])} | {_fmt(point['p99_s'])} | {_fmt(point['little_latency_s'], 1)} | {point['ok']} | {point['errors']} | "
            f"{_fmt(point.get('peak_rss_mb'), 0)} | {_fmt(point.get('model_cpu_cores'), 1)} / {_fmt(point.get('system_cpu_cores'), 1)} | {_fmt(point.get('load_average'), 1)} |"
        )
    ratios = []
    for workload in dict.fromkeys(p["workload"] for p in points):
        for level in sorted({p["concurrency"] for p in points if p["workload"] == workload}):
            ours, base = _point(points, "serve", workload, level), _point(points, "baseline", workload, level)
            if ours and base and base["rps"] > 0:
                p95 = f"{ours['p95_s'] / base['p95_s']:.2f}x" if ours["p95_s"] and base["p95_s"] else "–"
                ratios.append(f"| {workload} | {level} | {ours['rps'] / base['rps']:.1f}x | {p95} |")
    if ratios:
        lines += ["", "Serve / baseline, same run:", "", "| workload | clients | throughput | p95 latency |", "|---|---:|---:|---:|", *ratios]
    targets = results.get("targets") or []
    if targets:
        lines += ["", "Targets (issue 5):", "", "| target | measured | met |", "|---|---|---|"]
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
