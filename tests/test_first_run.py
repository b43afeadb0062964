"""First run: the model is resolved once before deploying, and a model that cannot be had
stops start-up with the project's one message instead of replicas retrying it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.hub_standin import HubStandIn
from tests.servers import ROOT, ServeRun, free_port, service, shipped_config

PREFLIGHT = [sys.executable, "-m", "serve_app.preflight", str(ROOT / "config.yaml")]


def preflight(env: dict[str, str], timeout_s: float = 90) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        PREFLIGHT, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout_s
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


@pytest.mark.unit
def test_a_missing_local_model_stops_at_once_with_one_message():
    code, output, seconds = preflight({"MT5_MODEL": "/nonexistent/mt5"})
    assert code == 2 and seconds < 10
    assert "Traceback" not in output
    assert output.count("cannot start") == 1
    assert (
        "'/nonexistent/mt5'" in output and "does not exist" in output and "MT5_MODEL" in output and "'demo'" in output
    )


@pytest.mark.parametrize("hub", ["modelscope", "huggingface"])
@pytest.mark.unit
def test_an_unreachable_hub_stops_within_seconds_naming_the_fix(tmp_path, hub):
    closed = f"127.0.0.1:{free_port()}"  # nothing listens here: the hub is unreachable
    if hub == "modelscope":  # config.yaml's own model, through modelscope's endpoint setting
        env = {"MT5_MODEL": "", "MODELSCOPE_DOMAIN": closed, "MODELSCOPE_CACHE": str(tmp_path / "cache")}
        named, failed = "iic/nlp_mt5_zero-shot-augment_chinese-base", "downloading it from modelscope.cn failed"
    else:
        env = {
            "MT5_MODEL": "hf:someone/mt5-copy",
            "HF_ENDPOINT": f"http://{closed}",
            "HF_HOME": str(tmp_path / "cache"),
        }
        named, failed = "hf:someone/mt5-copy", "Hugging Face Hub failed"
    code, output, seconds = preflight(env)
    assert code == 2 and seconds < 45, output
    assert "Traceback" not in output and output.count("cannot start") == 1
    assert named in output and failed in output and "MT5_MODEL" in output and "'demo'" in output
    assert not any((tmp_path / "cache").rglob("*.safetensors")) and not any((tmp_path / "cache").rglob("*.bin"))


@pytest.mark.unit
def test_a_resolvable_model_is_ready_before_serving():
    code, output, _ = preflight({"MT5_MODEL": "demo"})
    assert code == 0 and "model ready at" in output


@pytest.mark.service
def test_serve_run_with_a_model_that_cannot_be_had_fails_the_deployment_not_the_replicas(tmp_path):
    """Raw `serve run` (no preflight): the build fails with the message; no replica ever starts and retries it."""
    run = ServeRun(shipped_config(free_port()), tmp_path, env={"MT5_MODEL": "/nonexistent/mt5"}).launch()
    try:
        deadline = time.monotonic() + 150
        while "Deploying app 'mt5' failed" not in run.log_text():
            assert time.monotonic() < deadline, run.log_tail()
            assert run.process.poll() is None, run.log_tail()
            time.sleep(1)
        assert run.processes("ServeReplica") == []  # (a process exiting meanwhile, a zombie, is none)
        log = run.log_text()
        assert "'/nonexistent/mt5' is a local path, but /nonexistent/mt5 does not exist" in log
        assert "ServeReplica:mt5" not in log  # no replica started, so none retried the error
    finally:
        run.stop()


# ------------------------------------------------------------------ a local stand-in for the hub (HF_ENDPOINT)
REPO = "someone/mt5-copy"
SHARD = "extra-shard.dat"  # larger than the client's 10 MiB read chunk, so a resume can show
SHARD_BYTES = 24 * 2**20


def hub_of_the_demo(**kwargs) -> HubStandIn:
    from serve_app.engine.demo import demo_model_dir

    hub = HubStandIn.of_directory(REPO, demo_model_dir(), **kwargs)
    hub.files[SHARD] = hashlib.sha256(b"shard").digest() * (SHARD_BYTES // 32)
    return hub


def hub_env(hub: HubStandIn, cache: Path) -> dict[str, str]:
    return {"MT5_MODEL": f"hf:{REPO}", "HF_ENDPOINT": hub.url, "HF_HOME": str(cache), "HF_HUB_DISABLE_XET": "1"}


def snapshot_files(cache: Path) -> dict[str, bytes]:
    snapshots = list((cache / "hub").glob(f"models--{REPO.replace('/', '--')}/snapshots/*"))
    return {p.name: p.read_bytes() for snapshot in snapshots for p in snapshot.iterdir()}


@pytest.mark.unit
def test_a_dropped_connection_resumes_where_it_stopped(tmp_path):
    with hub_of_the_demo(drop_after={SHARD: 15 * 2**20}, drops_left=1) as hub:
        code, output, _ = preflight(hub_env(hub, tmp_path / "cache"))
    assert code == 0 and "model ready at" in output, output
    first, second = hub.body_gets(SHARD)
    assert first.start == 0 and first.sent == 15 * 2**20
    assert 0 < second.start <= first.sent and second.sent == SHARD_BYTES - second.start  # resumed, not restarted
    assert snapshot_files(tmp_path / "cache") == hub.files
    assert not list((tmp_path / "cache").rglob("*.incomplete"))


@pytest.mark.parametrize("how", ["ctrl_c", "kill_9"])
@pytest.mark.unit
def test_an_interrupted_download_is_never_taken_for_a_model_and_the_next_start_says_what_it_does(tmp_path, how):
    cache = tmp_path / "cache"
    # 2 MiB/s: the 20 MiB left when the signal goes take 10 s, so an exit within 8 s is Ctrl+C's doing,
    # with room for a loaded box to deliver it.
    with hub_of_the_demo(bytes_per_s=2 * 2**20) as hub:
        env = {**os.environ, **hub_env(hub, cache)}
        process = subprocess.Popen(
            PREFLIGHT, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 60
        while not any(f.sent > 4 * 2**20 for f in hub.body_gets(SHARD)):
            assert time.monotonic() < deadline and process.poll() is None, "the download never got going"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT if how == "ctrl_c" else signal.SIGKILL)
        interrupted_output = process.communicate(timeout=8)[0]  # Ctrl+C leaves at once, not when the file is done
        assert SHARD not in snapshot_files(cache)  # nothing half-written sits where the model is looked for
        if how == "ctrl_c":
            assert (
                process.returncode == 130
                and "interrupted while fetching" in interrupted_output
                and "Traceback" not in interrupted_output
            )
        assert list(cache.rglob("*.incomplete"))  # the partial file stays apart from the snapshot
        hub.bytes_per_s = 0
        code, output, _ = preflight(hub_env(hub, cache))
    assert code == 0, output
    assert output.count("stopped part-way") == 1 and "cannot resume them across runs" in output
    assert snapshot_files(cache) == hub.files
    assert not list(cache.rglob("*.incomplete"))


@pytest.mark.service
def test_the_model_is_fetched_once_per_node_however_many_replicas_load_it(tmp_path):
    """Against a hub, each file's body is fetched once: by the preflight of scripts/serve.sh, and by a raw
    `serve run` (build_app fetches before any replica starts; the ModelReplica and the light deployments'
    tokenizer then find everything in the node's cache)."""
    with hub_of_the_demo() as hub:
        hub.files.pop(SHARD)  # the replica loads this checkpoint: only its own files
        code, output, _ = preflight(hub_env(hub, tmp_path / "preflight-cache"))
        assert code == 0, output
        assert {name: len(hub.body_gets(name)) for name in hub.files} == {name: 1 for name in hub.files}
        hub.fetches.clear()
        with service(tmp_path / "serve", env=hub_env(hub, tmp_path / "cache")) as run:
            answer = httpx.post(
                f"{run.url}/classify", json={"text": "等了三天还没发货", "labels": ["物流延迟", "价格争议"]}, timeout=60
            )
            assert answer.status_code == 200, answer.text
        assert {name: len(hub.body_gets(name)) for name in hub.files} == {name: 1 for name in hub.files}
