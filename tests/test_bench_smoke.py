"""Smoke test of the benchmark harness (issue 5): the real load generator, baseline server and
report writer on the demo model with tiny durations. Benchmarks are not tests: no timing is asserted.

Starting Serve takes ~30 s here, so the Serve side runs only with BENCH_SMOKE_SERVE=1.
"""

from __future__ import annotations

import json
import os

import pytest

from bench import cpu_breakdown, levers, report, run, share
from bench.loadgen import Sample, percentile, summarize
from bench.workloads import LABELS, augment_workload, chinese_texts, classify_workload
from serve_app.engine import ScoringRequest, Seq2SeqEngine


def test_workloads_are_deterministic_and_shaped_as_issue_5_says():
    texts = chinese_texts(200, seed=0)
    assert texts == chinese_texts(200, seed=0)
    assert all(20 <= len(text) <= 80 for text in texts)
    classify = classify_workload(count=10)
    assert classify.route == "/classify" and all(body["labels"] == LABELS and len(LABELS) == 6 for body in classify.bodies)
    augment = augment_workload(count=10)
    assert augment.route == "/augment" and all(body["num_return_sequences"] == 2 and body["max_length"] == 32 for body in augment.bodies)


def test_summary_counts_only_the_measured_window():
    samples = [Sample(0.0, 0.5, 200), Sample(0.5, 2.0, 200), Sample(2.0, 3.0, 200), Sample(3.0, 3.5, 503, "busy"), Sample(3.5, 9.0, 200)]
    point = summarize(samples, system="x", workload="w", concurrency=1, window=(1.0, 5.0), warmup_s=1.0, in_flight_starts=[3.5], sent=5)
    assert (point.ok, point.errors, point.in_flight_at_end) == (2, 1, 1)
    assert point.rps == pytest.approx(0.5)
    # spread: (2-1)/1.5 of the second answer, all of the third, (5-3.5)/5.5 of the last, over 4 s
    assert point.rps_spread == pytest.approx((1 / 1.5 + 1 + 1.5 / 5.5) / 4)
    assert point.p50_s == pytest.approx(1.25) and point.max_s == pytest.approx(1.5)
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0


def test_targets_are_evaluated_against_the_same_run():
    def point(system, workload, concurrency, rps, p50, p95, errors=0):
        return {"system": system, "workload": workload, "concurrency": concurrency, "rps": rps, "rps_spread": rps, "p50_s": p50, "p95_s": p95, "errors": errors}

    results = {
        "points": [
            point("baseline", "classify", 1, 2.0, 0.5, 0.6), point("serve", "classify", 1, 1.9, 0.6, 0.7),
            point("baseline", "classify", 32, 2.0, 15.0, 16.0), point("serve", "classify", 32, 5.0, 0.6, 0.9),
            point("engine", "classify", 32, 6.0, None, None),
            point("baseline", "augment", 1, 0.4, 2.5, 2.6), point("serve", "augment", 1, 0.3, 2.6, 3.6),
            point("baseline", "augment", 32, 0.4, 20.0, 25.0), point("serve", "augment", 32, 3.6, 9.0, 12.0, errors=1),
            point("engine", "augment", 32, 4.0, None, None),
            point("serve", "mixed:classify", 1, 1.0, 0.9, 2.4), point("serve", "mixed:augment", 8, 1.0, 5.0, 6.0),
        ],
        "systems": {"serve": {"replica_peak_rss_mb": 3000.0, "replicas": 1}},
        "checkpoint": {"weights_mb": 2300.0},
    }
    met = {target["target"]: target["met"] for target in report.evaluate_targets(results)}
    assert met["augment: requests/s at 32 clients >= 8x baseline, no errors"] is False  # 9x, but one error
    assert met["augment: Serve at 32 clients >= 85% of the engine-only ceiling (batch 32)"] is True  # 90%
    assert met["classify: Serve at 32 clients >= 75% of the engine-only ceiling (batch 32)"] is True  # 83%
    assert met["mixed: /classify p95 while 8 augment clients run <= 3x lone /classify p50"] is False  # 4x (p95 2.4 s, lone p50 0.6 s)
    assert met["classify: a lone request's latency <= 1.1x the baseline's (p50, 1 client)"] is False  # 1.2x
    assert met["augment: a lone request's latency <= 1.1x the baseline's (p50, 1 client)"] is True  # 1.04x
    assert met["one copy of the weights per replica (ModelReplica peak RSS < 2x the weights)"] is True


def test_serving_share_is_taken_against_the_ceilings_around_each_round():
    def serve(workload, rps):
        return {"system": "serve", "workload": workload, "concurrency": 32, "rps": rps - 0.5, "rps_spread": rps, "errors": 0}

    def ceiling(classify, augment):
        return {"classify": {"requests_per_s": classify}, "augment": {"requests_per_s": augment}}

    ceilings = [ceiling(10.0, 4.0), ceiling(12.0, 6.0), ceiling(8.0, 4.0), ceiling(10.0, 4.0)]
    served = [(8.8, 4.5), (7.5, 4.0), (6.0, 3.0)]
    rounds = [
        share.round_shares([serve("classify", c), serve("augment", a)], ceilings[i], ceilings[i + 1]) for i, (c, a) in enumerate(served)
    ]
    # Round 1: 8.8 over the mean of 10 and 12 = 80 %; round 2: 7.5 / 10 = 75 %; round 3: 6.0 / 9 = 67 %.
    assert [r["classify"]["share"] for r in rounds] == pytest.approx([0.8, 0.75, 6.0 / 9])
    assert [r["augment"]["share"] for r in rounds] == pytest.approx([0.9, 0.8, 0.75])
    assert rounds[0]["classify"]["ceiling_before_rps"] == 10.0 and rounds[0]["classify"]["ceiling_after_rps"] == 12.0
    summary = share.verdict(rounds)
    assert summary["classify"]["median"] == pytest.approx(0.75) and summary["classify"]["met"] is True  # target 75 %
    assert summary["augment"]["median"] == pytest.approx(0.8) and summary["augment"]["met"] is False  # target 85 %
    assert (summary["augment"]["low"], summary["augment"]["high"]) == pytest.approx((0.75, 0.9))
    assert "**75%** (67%–80%; target 75%: met)" in share.markdown(rounds, summary)


def test_serving_share_splits_into_the_cores_serve_got_and_its_work_per_cpu_second():
    # The engine alone: 5 req/s on 2.0 cores, then 4 req/s on 2.0 cores (2.5 and 2.0 req/s per core).
    before = {"augment": {"requests_per_s": 5.0, "cpu_cores": 2.0}}
    after = {"augment": {"requests_per_s": 4.0, "cpu_cores": 2.0}}
    # Serve: 3.6 req/s with its model process on 1.7 cores.
    point = {"system": "serve", "workload": "augment", "concurrency": 32, "rps": 3.5, "rps_spread": 3.6, "errors": 0, "model_cpu_cores": 1.7}
    measured = share.round_shares([point], before, after)["augment"]
    assert measured["share"] == pytest.approx(3.6 / 4.5)
    assert measured["cpu_share"] == pytest.approx(1.7 / 2.0)
    assert measured["work_per_cpu"] == pytest.approx((3.6 / 1.7) / 2.25)
    summary = share.verdict([{"augment": measured}])
    assert summary["augment"]["median_cpu_share"] == pytest.approx(0.85)
    assert "| 1.70 / 2.00 = 85% | 94% |" in share.markdown([{"augment": measured}], summary)


def test_serving_share_runs_serve_and_the_ceiling_on_the_same_threads_and_lanes():
    """--serve-args reaches Serve, and the ceiling follows its torch threads and lanes (a core left to Ray)."""
    ours, run_args = share.parse_args(["--serve-args", '{"torch_threads": 1, "scheduler_lanes": 1}', "--rounds", "2"])
    assert ours.rounds == 2
    assert run_args.serve_args == {"torch_threads": 1, "scheduler_lanes": 1}
    command = run.ceiling_command("/ckpt", "augment", 32, run_args, "bfloat16")
    assert command[command.index("--threads") + 1] == "1"
    assert command[command.index("--lanes") + 1] == "1"
    _, shipped = share.parse_args([])
    assert shipped.serve_args == {}
    default = run.ceiling_command("/ckpt", "classify", 32, shipped, "bfloat16")
    assert "--threads" not in default  # every core, as the shipped ModelReplica
    assert default[default.index("--lanes") + 1] == "auto"


def test_cpu_breakdown_names_serve_processes_and_reads_the_lanes_summaries():
    from serve_app.deployments.replica_metrics import _Window
    from serve_app.scheduling.scheduler import IterationReport

    role = cpu_breakdown.role_of
    assert role("ray::ServeReplica:mt5:Generator.handle_request_with_rejection") == "Generator"
    assert role("ray::ServeController.get_serve_instance_details") == "ServeController"
    assert role("ray::ProxyActor") == "ProxyActor"
    assert role("/x/.venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp") == "gcs_server"
    assert role("/x/.venv/bin/python3 -u /x/ray/_private/log_monitor.py --session-dir=/tmp") == "log_monitor"
    assert role("/x/.venv/bin/python /x/.venv/bin/serve run /tmp/config.yaml") == "serve run (driver)"

    def summary_line(lane, steps):  # the replica's own summary format, as serve run prints it
        window = _Window()
        for rows, seconds in steps:
            window.add(IterationReport(started=0.0, seconds=seconds, live_rows=rows, step_seconds=seconds))
        return f"INFO replica.py:1 pid=42 scheduler[lane={lane}]: {window.summary()} rows_hist={{17-32:9}}"

    text = "\n".join([summary_line(0, [(32, 0.25), (30, 0.35)]), summary_line(1, [(2, 0.1)]), summary_line(0, [(32, 0.3)])])
    lanes = cpu_breakdown.lane_steps(text)
    assert lanes["0"] == pytest.approx({"steps": 3, "rows_mean": 94 / 3, "step_ms_mean": 300.0})
    assert lanes["1"] == pytest.approx({"steps": 1, "rows_mean": 2.0, "step_ms_mean": 100.0})


def test_wakeups_count_a_process_s_sleeps_and_are_taken_per_role():
    """procs.wakeups counts the sleeps of every thread of a process; cpu_breakdown.by_role turns them into rates per role."""
    import subprocess
    import sys

    from bench import procs

    sleeper = subprocess.Popen(
        [sys.executable, "-u", "-c", "import sys, time\nfor _ in range(60): time.sleep(0.001)\nprint('slept')\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert sleeper.stdout.readline() == b"slept\n"
        slept = procs.wakeups(sleeper.pid)
        assert slept is not None and slept >= 60  # each time.sleep is one voluntary switch at least
        rates = cpu_breakdown.by_role({sleeper.pid: 0}, lambda pid: slept, 2.0)
        assert rates == {cpu_breakdown.role_of(procs.cmdline(sleeper.pid)): pytest.approx(slept / 2.0)}
    finally:
        sleeper.stdin.close()
        sleeper.wait(timeout=10)
    assert procs.wakeups(sleeper.pid) is None and procs.preemptions(sleeper.pid) == 0  # gone: no rate, not a negative one
    assert cpu_breakdown.by_role({sleeper.pid: 5}, procs.wakeups, 1.0) == {}


def test_harness_end_to_end_against_the_real_baseline_server(tmp_path):
    """bench.run's real command path: baseline server subprocess, closed-loop load, json/csv/png/markdown."""
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nhand-written text that must survive\n")
    argv = [
        "--model", "demo", "--systems", "baseline", "--concurrency", "1", "3",
        "--duration", "1", "--warmup", "0.3", "--augment-duration", "1", "--augment-warmup", "0.3", "--drain", "5", "--augment-max-length", "4",
        "--out", str(tmp_path / "results"), "--md", str(md), "--logs", str(tmp_path / "logs"), "--no-ceiling",
    ]
    results = run.main(argv)
    points = results["points"]
    assert {(p["workload"], p["concurrency"]) for p in points} == {("classify", 1), ("classify", 3), ("augment", 1), ("augment", 3)}
    for p in points:
        assert p["system"] == "baseline" and p["ok"] > 0 and p["errors"] == 0, p
        assert p["p50_s"] is not None and p["peak_rss_mb"] and p["peak_rss_mb"] > 0
        assert p["model_cpu_cores"] is not None and p["system_cpu_cores"] is not None
    assert results["systems"]["baseline"]["health"]["dtype"] == "float32"
    saved = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert saved["points"] == points
    assert (tmp_path / "results" / "bench.csv").read_text().startswith("system,workload,concurrency,rps")
    assert (tmp_path / "results" / "bench.png").stat().st_size > 1000
    text = md.read_text()
    assert "hand-written text that must survive" in text and "| classify | 3 | baseline |" in text
    run.main(argv)
    assert md.read_text().count("<!-- bench-run:start -->") == 1  # a rerun replaces its section


def test_serve_patch_is_applied_to_a_copy_not_the_tree(tmp_path):
    readme = run.ROOT / "README.md"
    original = readme.read_text()
    first = original.splitlines()[0]
    patch = tmp_path / "readme.patch"
    patch.write_text(f"--- a/README.md\n+++ b/README.md\n@@ -1,1 +1,1 @@\n-{first}\n+{first} (patched)\n")
    tree = run.patched_tree([patch], tmp_path)
    assert (tree / "README.md").read_text().splitlines()[0] == f"{first} (patched)"
    assert readme.read_text() == original and (tree / "serve_app" / "app.py").is_file() and not (tree / ".venv").exists()


def test_harness_drives_the_serve_app(tmp_path):
    argv = [
        "--model", "demo", "--systems", "serve", "--concurrency", "2", "--duration", "1", "--warmup", "0.3",
        "--augment-duration", "1", "--augment-warmup", "0.3",
        "--augment-max-length", "4", "--out", str(tmp_path), "--no-md", "--logs", str(tmp_path / "logs"),
    ]
    results = run.main(argv)
    assert all(p["errors"] == 0 for p in results["points"]), results["points"]
    # a 1 s window may close before a mixed-load classify answers on a busy machine; the plain points always answer
    assert all(p["ok"] > 0 for p in results["points"] if not p["workload"].startswith("mixed")), results["points"]
    assert results["systems"]["serve"]["replicas"] == 1 and results["systems"]["serve"]["replica_peak_rss_mb"] > 0
    # config.yaml's dtype: auto, as shipped: bfloat16 where torch reports AMX, float32 elsewhere
    from serve_app.engine.precision import cpu_has_amx

    health = results["systems"]["serve"]["health"]
    assert health["dtype"] == ("bfloat16" if cpu_has_amx() else "float32") and health["dtype_reason"].startswith("auto: ")
    by_point = {(p["system"], p["workload"], p["concurrency"]): p for p in results["points"]}
    assert {("serve", "mixed:classify", 1), ("serve", "mixed:augment", 8), ("engine", "classify", 2), ("engine", "augment", 2)} <= set(by_point)
    assert by_point[("engine", "augment", 2)]["ceiling"]["before_serve"]["batch"] == 2
    # the ceiling splits its batch into the lanes Serve's ModelReplica runs here (scheduler_lanes: auto)
    from serve_app.scheduling.lanes import lane_count

    assert by_point[("engine", "augment", 2)]["ceiling"]["before_serve"]["lanes"] == lane_count("auto", "cpu", os.cpu_count() or 1)
    # and reports the cores its lanes kept busy, the measure of its work per CPU second
    assert 0.2 < by_point[("engine", "augment", 2)]["ceiling"]["before_serve"]["cpu_cores"] <= (os.cpu_count() or 1) + 0.1
    # the scheduler's rows-per-step histogram, read from its log, is attached to each Serve point
    assert sum(by_point[("serve", "augment", 2)]["rows_per_step"].values()) > 0


def test_levers_run_on_the_demo_model(tmp_path):
    argv = [
        "--model", "demo", "--levers", "packed", "buckets", "vocab", "--repeats", "1", "--score-batch", "4",
        "--gen-batch", "2", "--new-tokens", "2", "--out", str(tmp_path / "levers.json"), "--md", str(tmp_path / "B.md"),
    ]
    results = levers.main(argv)
    assert set(results["levers"]) == {"packed", "buckets", "vocab"}
    assert all(not lever.get("error") and lever["variants"] for lever in results["levers"].values())
    assert "**packed**" in (tmp_path / "B.md").read_text()


def test_packed_and_bucketed_scoring_equal_per_label_rows(demo_model):
    """The engine levers bench.levers measures give the same scores (up to float rounding)."""
    engine = Seq2SeqEngine(demo_model.model)
    tok = demo_model.tokenizer
    texts = ["今天阳光明媚", "股市今天大幅上涨,银行板块领涨,成交量明显放大,投资者情绪高涨", "物流太慢了"]
    label_sets = [["天气", "美食"], ["财经", "体育", "科技", "新能源汽车"], ["物流延迟", "商品缺货", "售后响应慢"]]
    requests = [
        ScoringRequest(tok(text * (1 + i)).input_ids, [tok(label).input_ids[:-1] for label in labels])
        for i, (text, labels) in enumerate(zip(texts * 3, label_sets * 3))
    ]
    with levers.engine_knobs(engine, packed_scoring=False, bucket_overhead_tokens=None):
        reference = engine.score(requests)
    for packed, overhead in ((True, None), (False, 1), (True, 1), (True, 64)):
        with levers.engine_knobs(engine, packed_scoring=packed, bucket_overhead_tokens=overhead):
            results = engine.score(requests)
        for got, want in zip(results, reference):
            assert got.log_scores == pytest.approx(want.log_scores, abs=1e-4)
            assert got.probabilities == pytest.approx(want.probabilities, abs=1e-5)


def test_gpu_suite_runs_every_part_on_the_demo_model(tmp_path):
    """The one command a session lent a GPU runs (bench/gpu_suite.sh): here on the CPU, seconds-long windows."""
    from bench import gpu_suite

    results = gpu_suite.main(["--device", "cpu", "--model", "demo", "--quick", "--clients", "4", "--out", str(tmp_path)])
    parts = results["parts"]
    assert list(parts) == ["levers", "serving_core_augment", "serving_core_classify", "lone_augment", "lone_classify", "fidelity"]
    assert not [name for name, part in parts.items() if "error" in part]
    for name in ("serving_core_augment", "serving_core_classify"):
        measured = parts[name]["result"]
        assert measured["clients"] == 4 and measured["engine_ceiling"]["batch"] == 4
        assert measured["scheduler_loop"]["answers"] > 0 and measured["share_of_ceiling"] > 0
    assert parts["lone_augment"]["result"]["engine_ceiling"]["batch"] == 1
    assert parts["levers"]["result"]["ceiling"]["variants"]["augment n=2 x 32 tokens, engine batch 32"]["x_baseline"] > 0
    saved = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert saved["parts"].keys() == parts.keys()
    summary = (tmp_path / "gpu_suite.md").read_text()
    assert "serving_core_augment: scheduler" in summary and "bfloat16, full vocabulary against float32" in summary


def test_neighbour_runs_every_arm_each_round_and_leaves_no_neighbour_behind(tmp_path):
    """bench.neighbour on the demo model: each arm once per round, its ratios taken, the neighbours gone after."""
    from bench import neighbour, procs

    before = set(procs.descendants(os.getpid()))
    out = tmp_path / "neighbour.json"
    result = neighbour.main(["--model", "demo", "--batch", "4", "--rounds", "3", "--duty", "0.5", "--out", str(out)])
    assert {arm: len(seconds) for arm, seconds in result["seconds"].items()} == {"none": 3, "python": 3, "memory": 3, "chatty": 3}
    assert set(result["slowdown"]) == {"python", "memory", "chatty"}
    assert all(ratio["wall"] > 0 and ratio["cpu"] > 0 for ratio in result["slowdown"].values())
    # the neighbours really ran while their arm did: python and memory about half a core (one process each),
    # chatty's eight processes whatever the box's cores give them
    cores = result["neighbour_cores"]
    assert 0.2 < cores["python"] < 1.05 and 0.2 < cores["memory"] < 1.05 and 0 < cores["chatty"] < (os.cpu_count() or 1) + 0.05, cores
    assert set(procs.descendants(os.getpid())) == before
    assert json.loads(out.read_text())["machine"]


def test_a_neighbour_program_keeps_to_its_duty():
    from bench.neighbour import NeighbourKind, neighbour_source

    source = neighbour_source(NeighbourKind(1, 0.005, "bytes(block)", 0.25))
    compile(source, "neighbour", "exec")
    assert "time.sleep(0.015)" in source and "bytes(block)" in source
