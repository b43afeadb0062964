"""First run (issue 15): the model is resolved once before deploying, and a model that cannot be had
stops start-up with the project's one message instead of replicas retrying it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.servers import ROOT, SERVE, free_port, test_config

PREFLIGHT = [sys.executable, "-m", "serve_app.preflight", str(ROOT / "config.yaml")]


def preflight(env: dict[str, str], timeout_s: float = 90) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(PREFLIGHT, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout_s)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_a_missing_local_model_stops_at_once_with_one_message():
    code, output, seconds = preflight({"MT5_MODEL": "/nonexistent/mt5"})
    assert code == 2 and seconds < 10
    assert "Traceback" not in output
    assert output.count("cannot start") == 1
    assert "'/nonexistent/mt5'" in output and "does not exist" in output and "MT5_MODEL" in output and "'demo'" in output


@pytest.mark.parametrize("hub", ["modelscope", "huggingface"])
def test_an_unreachable_hub_stops_within_seconds_naming_the_fix(tmp_path, hub):
    closed = f"127.0.0.1:{free_port()}"  # nothing listens here: the hub is unreachable
    if hub == "modelscope":  # config.yaml's own model, through modelscope's endpoint setting
        env = {"MT5_MODEL": "", "MODELSCOPE_DOMAIN": closed, "MODELSCOPE_CACHE": str(tmp_path / "cache")}
        named, failed = "iic/nlp_mt5_zero-shot-augment_chinese-base", "downloading it from modelscope.cn failed"
    else:
        env = {"MT5_MODEL": "hf:someone/mt5-copy", "HF_ENDPOINT": f"http://{closed}", "HF_HOME": str(tmp_path / "cache")}
        named, failed = "hf:someone/mt5-copy", "Hugging Face Hub failed"
    code, output, seconds = preflight(env)
    assert code == 2 and seconds < 45, output
    assert "Traceback" not in output and output.count("cannot start") == 1
    assert named in output and failed in output and "MT5_MODEL" in output and "'demo'" in output
    assert not any((tmp_path / "cache").rglob("*.safetensors")) and not any((tmp_path / "cache").rglob("*.bin"))


def test_a_resolvable_model_is_ready_before_serving():
    code, output, _ = preflight({"MT5_MODEL": "demo"})
    assert code == 0 and "model ready at" in output


def test_serve_run_with_a_model_that_cannot_be_had_fails_the_deployment_not_the_replicas(tmp_path):
    """Raw `serve run` (no preflight): the build fails with the message; no replica ever starts and retries it."""
    import yaml

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(test_config(free_port()), allow_unicode=True))
    log_path = tmp_path / "serve-run.log"
    env = {**os.environ, "MT5_MODEL": "/nonexistent/mt5", "RAY_ADDRESS": "local", "RAY_DEDUP_LOGS": "0"}
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(SERVE), "run", str(config_path)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while "Deploying app 'mt5' failed" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            time.sleep(1)
        replicas = [p for p in psutil.Process(process.pid).children(recursive=True) if "ServeReplica" in " ".join(p.cmdline())]
        assert replicas == []
        log = log_path.read_text(errors="replace")
        assert "'/nonexistent/mt5' is a local path, but /nonexistent/mt5 does not exist" in log
        assert "ServeReplica:mt5" not in log  # no replica started, so none retried the error
    finally:
        from bench.procs import stop_group

        stop_group(process, timeout_s=60)
