"""The benchmarks as a user runs them (`python -m bench <command>`), on the demo model with seconds-long windows.

These check that each entry point runs end to end and writes what it says, not its figures:
figures come from a real run on the benchmark checkpoint (BENCHMARKS.md).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.__main__ import COMMANDS
from bench.__main__ import main as bench
from bench.lib import results
from bench.lib.loadgen import Sample, percentile, summarize
from bench.lib.workloads import (
    LABELS,
    augment_workload,
    chinese_texts,
    classify_workload,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_workloads_are_deterministic_and_shaped_as_documented():
    texts = chinese_texts(200, seed=0)
    assert texts == chinese_texts(200, seed=0)
    assert all(20 <= len(text) <= 80 for text in texts)
    classify = classify_workload(count=10)
    assert classify.route == "/classify" and all(
        body["labels"] == LABELS and len(LABELS) == 6 for body in classify.bodies
    )
    augment = augment_workload(count=10)
    assert augment.route == "/augment" and all(
        body["num_return_sequences"] == 2 and body["max_length"] == 32 for body in augment.bodies
    )


@pytest.mark.unit
def test_summary_counts_only_the_measured_window():
    samples = [
        Sample(0.0, 0.5, 200),
        Sample(0.5, 2.0, 200),
        Sample(2.0, 3.0, 200),
        Sample(3.0, 3.5, 503, "busy"),
        Sample(3.5, 9.0, 200),
    ]
    point = summarize(
        samples,
        system="x",
        workload="w",
        concurrency=1,
        window=(1.0, 5.0),
        warmup_s=1.0,
        in_flight_starts=[3.5],
        sent=5,
    )
    assert (point.ok, point.errors, point.in_flight_at_end) == (2, 1, 1)
    assert point.rps == pytest.approx(0.5)
    # spread: (2-1)/1.5 of the second answer, all of the third, (5-3.5)/5.5 of the last, over 4 s
    assert point.rps_spread == pytest.approx((1 / 1.5 + 1 + 1.5 / 5.5) / 4)
    assert point.p50_s == pytest.approx(1.25) and point.max_s == pytest.approx(1.5)
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0


@pytest.mark.unit
def test_eight_entry_points_that_never_import_each_other():
    help_text = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert list(COMMANDS) == ["serve", "engine", "against", "fidelity", "jobs", "teams", "storm", "gpu"]
    assert all(name in help_text for name in COMMANDS)
    entry_points = sorted(
        path.stem for path in (ROOT / "bench").glob("*.py") if path.stem not in ("__init__", "__main__")
    )
    assert entry_points == sorted(COMMANDS)
    for name in COMMANDS:
        tree = ast.parse((ROOT / "bench" / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {f"bench.{other}" for other in COMMANDS} & imported, (name, imported)
        names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert {"add_cli_args", "main"} <= names, name


@pytest.mark.unit
def test_the_page_is_regenerated_from_the_results_files(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text("# hand-written text that a regeneration replaces\n")
    machine = {"description": "2-core Test CPU (avx512_bf16), 24 GiB, no GPU"}
    results.save(
        "engine",
        {"date": "2026-12-03T10:00:00+00:00", "command": "python -m bench engine", "machine": machine},
        "| format | texts/s |\n|---|---|\n| float32 | 5.1 |",
        out_dir=tmp_path / "results",
        page=page,
    )
    text = page.read_text()
    assert "hand-written" not in text
    assert "| float32 | 5.1 |" in text and "2-core Test CPU (avx512_bf16)" in text
    assert text.count("Not run yet") == len(results.SECTIONS) - 1  # every section but the engine's
    for command in ("python -m bench serve", "python -m bench engine", "python -m bench fidelity", "gpu_suite.sh"):
        assert command in text
    saved = json.loads((tmp_path / "results" / "engine.json").read_text())
    assert saved["section"].startswith("| format |")
    assert results.relative(ROOT / "bench" / "results" / "x.json") == "bench/results/x.json"


@pytest.mark.unit
def test_the_shipped_page_is_what_the_results_files_make():
    assert results.write_page(results.RESULTS_DIR, Path("/dev/null")) == (ROOT / "BENCHMARKS.md").read_text()
    assert len((ROOT / "BENCHMARKS.md").read_text().splitlines()) <= 300
    for path in results.RESULTS_DIR.glob("*.json"):
        assert "/tmp/" not in path.read_text() and "/root/" not in path.read_text(), path


@pytest.mark.unit
def test_engine_runs_every_format_against_float32(tmp_path):
    out = bench(["engine", "--quick", "--out", str(tmp_path)])
    formats = out["parts"]["formats"]["formats"]
    assert list(formats) == ["float32", "bfloat16", "int8"]
    assert formats["float32"]["max_abs_dp"] == 0 and formats["float32"]["top_label_agreement"] == 1
    for name, figures in formats.items():
        assert (
            figures["classify_texts_per_s"] > 0
            and figures["generate32_tokens_per_s"] > 0
            and figures["generate1_tokens_per_s"] > 0
        ), name
    assert 0 < formats["bfloat16"]["max_abs_dp"] < 0.05
    # The roofline: this machine's bounds measured, the work counted, every figure against its bound.
    bounds, work = out["parts"]["roofline"], out["parts"]["formats"]["work"]
    assert set(bounds["matmul_peak"]) == {"float32", "bfloat16", "int8"} and bounds["read_bandwidth"]["gb_per_s"] > 0
    assert work["classify_flops_per_text"] > 0 and work["step_flops"] > 0 and work["step_parameters"] > 0
    for name, figures in formats.items():
        r = figures["roofline"]
        assert 0 < r["classify_of_peak"] < 1.5 and r["step_read_floor_ms"] > 0 and r["step_matmul_floor_ms"] > 0, name
        assert r["classify_gflops"] == pytest.approx(
            figures["classify_texts_per_s"] * work["classify_flops_per_text"] / 1e9
        )
    assert out["parts"]["auto"]["dtype"] in ("float32", "bfloat16") and out["parts"]["auto"]["reason"].startswith(
        "auto"
    )
    assert out["parts"]["keep_label"]["sample_s_per_candidate"] > 0
    side = out["parts"]["ctranslate2"]  # the same model converted: float32 probabilities match before any speed
    assert side["float32_match"]["max_abs_dp"] <= 1e-5 and side["float32_match"]["top_label_agreement"] == 1, side
    assert {"ours auto", "ours float32", "ctranslate2 float32", "ctranslate2 int8"} <= set(side["systems"])
    assert all(v["classify_texts_per_s"] > 0 and v["generate32_tokens_per_s"] > 0 for v in side["systems"].values())
    saved = json.loads((tmp_path / "engine-quick.json").read_text())
    assert (
        "| bfloat16 |" in saved["section"]
        and "| ctranslate2 int8 |" in saved["section"]
        and "Against this machine's own bounds" in saved["section"]
        and saved["command"].startswith(".venv/bin/python -m bench engine --quick")
    )


@pytest.mark.unit
def test_against_runs_a_revision_and_this_checkout_side_by_side(tmp_path):
    out = bench(["against", "HEAD", "--quick", "--out", str(tmp_path)])
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert out["revision_commit"] == head.stdout.strip() and out["this_commit"].startswith(head.stdout.strip())
    runs = out["runs"]
    assert len(runs["revision"]) == len(runs["this"]) == 1
    for run in (*runs["revision"], *runs["this"]):
        assert run["generation_tokens_per_s"] > 0 and run["classify_texts_per_s"] > 0 and run["tokens"] > 0, run
        assert run["dtype"] == runs["this"][0]["dtype"]  # the same dtype: `auto` decides alike in both trees
    for figure, ratio in out["ratios"].items():
        assert ratio["best"] == pytest.approx(runs["this"][0][figure] / runs["revision"][0][figure])
    section = json.loads((tmp_path / "against-quick.json").read_text())["section"]
    assert "This checkout against HEAD: generation **" in section and "| this checkout |" in section
    with pytest.raises(SystemExit, match="'no-such-ref' is not a commit or tag of this repository"):
        bench(["against", "no-such-ref", "--quick", "--out", str(tmp_path)])


@pytest.mark.unit
def test_fidelity_compares_every_variant_with_float32(tmp_path):
    out = bench(["fidelity", "--quick", "--int8-by-layer", "--out", str(tmp_path)])
    [model] = out["models"]
    variants = model["variants"]
    assert {
        "float32, full vocabulary (reference)",
        "float32, label_tokens",
        "bfloat16, full vocabulary",
        "int8, full vocabulary",
    } <= set(variants)
    assert variants["float32, full vocabulary (reference)"]["alone_vs_batch"]["max_abs_dp"] < 1e-5
    assert all(0 <= v.get("max_abs_dp", 0) <= 1 and v["requests_per_s"] > 0 for v in variants.values())
    # Layer by layer: every linear is in exactly one group; int8 everywhere is the service's int8, to the last bit.
    study = model["int8_by_layer"]
    by_layer = study["variants"]
    assert (
        by_layer["everywhere"]["quantised_linears"] == study["linears"]
        and by_layer["only lm_head"]["quantised_linears"] == 1
    )
    groups = [name.removeprefix("only ") for name in by_layer if name.startswith("only ")]
    assert (
        len(groups) == 8 and sum(by_layer[f"only {group}"]["quantised_linears"] for group in groups) == study["linears"]
    )
    assert all(
        by_layer[f"only {group}"]["quantised_linears"] + by_layer[f"all but {group}"]["quantised_linears"]
        == study["linears"]
        for group in groups
    )
    assert by_layer["everywhere"]["max_abs_dp"] == variants["int8, full vocabulary"]["max_abs_dp"]
    assert (
        "| all but decoder feed-forward out (wo) | "
        in json.loads((tmp_path / "fidelity-quick.json").read_text())["section"]
    )


def gpu_suite(out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """bench/gpu_suite.sh as the device tool runs it, with this interpreter for the GPU image's python3."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", "bench/gpu_suite.sh", str(out), *options], cwd=ROOT, capture_output=True, text=True, env=env
    )


@pytest.mark.unit
def test_the_gpu_suite_without_cuda_stops_in_seconds_and_says_why(tmp_path, monkeypatch):
    started = time.monotonic()
    refused = gpu_suite(tmp_path)
    assert refused.returncode == 1 and time.monotonic() - started < 60
    assert (tmp_path / "preflight.txt").read_text().startswith("missing: CUDA (torch ")
    assert not (tmp_path / "gpu.json").exists()
    # Straight at the entry point, the refusal is the same.
    direct = subprocess.run(
        [sys.executable, "-m", "bench", "gpu", "--out", str(tmp_path / "direct")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert direct.returncode != 0 and "sees no usable CUDA device" in direct.stderr
    # Nothing is missing here for a CPU run; a module that is missing is named with its error.
    from bench.lib import gpu_preflight

    assert gpu_preflight.problems("cpu")[0] == []
    monkeypatch.setattr(gpu_preflight, "THIRD_PARTY", ("no_such_module_mt5",))
    missing, _ = gpu_preflight.problems("cpu")
    assert missing == ["no_such_module_mt5 (ModuleNotFoundError: No module named 'no_such_module_mt5')"]


@pytest.mark.unit
def test_the_gpu_suite_rehearses_every_part_on_the_cpu(tmp_path):
    """The whole suite, `--device cpu --quick`, through gpu_suite.sh: the script cannot rot unnoticed."""
    ran = gpu_suite(tmp_path, "--device", "cpu", "--quick")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert (tmp_path / "preflight.txt").read_text().startswith("ok: python ")
    out = json.loads((tmp_path / "gpu.json").read_text())
    assert out["device"] == "cpu" and out["dtype"] in ("float32", "bfloat16") and out["dtype_reason"]
    assert {"python", "torch", "transformers"} <= set(out["versions"])
    assert not [name for name, part in out["parts"].items() if "result" not in part], out["parts"]
    assert list(out["parts"]) == [
        "augment_latency",
        "memory",
        "classify_batch",
        "decode_graphs",
        "seeded_invariance",
        "fidelity",
        "against_baseline",
        "classify_clients",
    ]  # the cheap parts first, the open-ended sweep last
    result = {name: part["result"] for name, part in out["parts"].items()}
    assert result["augment_latency"]["median_s"] > 0
    graphs = result["decode_graphs"]
    assert not graphs["captured"] and graphs["graphs_captured"] == 0  # no CUDA: the fixed-shape step, uncaptured
    assert graphs["captures_in_timed_loops"] == 0
    assert graphs["start_up"]["rows"] == 8 and graphs["start_up"]["graphs"] == 0 and graphs["start_up"]["cache_gib"] > 0
    # bfloat16 here (auto): the longer masked attention rounds differently, so only the count is reported;
    # float32 gives the same tokens (tests/test_graphed_step.py).
    assert graphs["requests"] == 17 and 0 <= graphs["identical_requests"] <= 17 and graphs["x_eager"]["rows_32"] > 0
    seeded = result["seeded_invariance"]
    assert set(seeded) == {"float32 eager", "float32 graphs", "bfloat16 eager", "bfloat16 graphs"}
    for kind in ("float32 eager", "float32 graphs"):  # float32: alone == batched, the README's promise
        assert seeded[kind] == {"requests": 8, "identical_alone_and_batched": 8, "first_step_parted": None}, kind
    clients = result["classify_clients"]
    assert clients["budgets"]["max_batch_rows"] == 64  # on a CPU the CPU-sized budgets; on CUDA the GPU profile's
    last = clients["points"][-1]
    assert clients["at_least"] == (clients["stopped"] != "p95 reached a second" and last["p95_s"] < 1)
    assert ("**>= " in out["section"]) == clients["at_least"]
    assert "Device `cpu`" in out["section"] and out["section"].count("\n- ") == 8


@pytest.mark.unit
def test_a_gpu_run_skips_what_its_budget_no_longer_holds_and_says_so(tmp_path):
    out = bench(["gpu", "--device", "cpu", "--quick", "--budget-s", "0.1", "--out", str(tmp_path)])
    skipped = {name: part["skipped"] for name, part in out["parts"].items()}
    assert len(skipped) == 8 and all("of the budget left" in reason for reason in skipped.values()), skipped
    assert json.loads((tmp_path / "gpu.json").read_text())["parts"] == out["parts"]  # written as it went


@pytest.mark.unit
def test_a_seeded_requests_first_parting_step_is_its_earliest_differing_token():
    from bench.gpu import _first_difference

    assert _first_difference([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6]]) == 1
    assert _first_difference([[1, 2, 3]], [[1, 2]]) == 2  # one ended early


@pytest.mark.unit
def test_an_earlier_release_is_checked_out_beside_the_tree(tmp_path):
    from bench.lib.revisions import checkout

    tree = checkout("HEAD", tmp_path / "tree")
    assert (tree / "config.yaml").read_text() == subprocess.run(
        ["git", "show", "HEAD:config.yaml"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert (tree / "serve_app" / "app.py").is_file() and not (tree / ".git").exists()


@pytest.mark.service
def test_serve_runs_the_baseline_and_the_service_side_by_side(tmp_path):
    out = bench(
        [
            "serve",
            "--quick",
            "--workloads",
            "classify",
            "augment",
            "sweep",
            "--concurrency",
            "2",
            "--sweep-clients",
            "1",
            "2",
            "--augment-max-length",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    assert set(out["systems"]) == {"baseline", "serve"}
    plain = [p for p in out["points"] if not p["workload"].startswith("sweep")]
    assert {(p["system"], p["workload"], p["concurrency"]) for p in plain} == {
        (system, workload, 2) for system in ("baseline", "serve") for workload in ("classify", "augment")
    }
    swept = [(p["system"], p["concurrency"]) for p in out["points"] if p["workload"] == "sweep:classify"]
    assert swept == [
        ("baseline", 1),
        ("baseline", 2),
        ("serve", 1),
        ("serve", 2),
    ]  # p95 stays under 1 s on the demo model
    assert all(p["errors"] == 0 and p["ok"] > 0 for p in out["points"]), out["points"]
    assert {(r["workload"], r["clients"]) for r in out["ratios"]} == {("classify", 2), ("augment", 2)}
    assert out["systems"]["serve"]["health"]["dtype_reason"].startswith("auto")  # the shipped config.yaml: dtype auto
    assert out["systems"]["serve"]["model_peak_rss_mb"] > 0
    saved = json.loads((tmp_path / "serve-quick.json").read_text())
    assert "| serve | baseline | classify | 2 |" in saved["section"] and "Most /classify clients" in saved["section"]
