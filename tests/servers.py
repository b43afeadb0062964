"""Start the real service for tests: `serve run` on a copy of config.yaml, demo model, loopback port."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import yaml

from bench.procs import stop_group

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
SERVE = Path(sys.executable).with_name("serve")


def shipped_dtype() -> str:
    """What config.yaml's `dtype: auto` runs on this machine (bfloat16 with AMX, else float32)."""
    from serve_app.engine.precision import cpu_has_amx

    return "bfloat16" if cpu_has_amx() else "float32"


# The same input scored inside different batches: float32 rounding stays far below 1e-5; bfloat16's
# 8-bit mantissa makes padding and batch shape show at about 1e-4 in a probability (BENCHMARKS.md, fidelity).
SCORE_TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-3}


def assert_same_classification(a: dict[str, Any], b: dict[str, Any], dtype: str | None = None) -> None:
    """Two /classify answers for one input computed in different batches: the same up to rounding.

    The top label is the same unless the two best labels are within rounding of each other."""
    tolerance = SCORE_TOLERANCE[dtype or shipped_dtype()]
    assert set(a["labels"]) == set(b["labels"])
    scores_a, scores_b = dict(zip(a["labels"], a["scores"])), dict(zip(b["labels"], b["scores"]))
    for label, score in scores_a.items():
        assert abs(score - scores_b[label]) <= tolerance, (label, score, scores_b[label])
    if len(a["scores"]) < 2 or a["scores"][0] - a["scores"][1] > 2 * tolerance:
        assert a["label"] == b["label"] and a["labels"] == b["labels"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_config(port: int, deployment_overrides: dict[str, dict[str, Any]] | None = None, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.yaml as shipped, on a loopback port, with a test's changes to deployments and args."""
    config = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))
    config["http_options"].update({"host": "127.0.0.1", "port": port})
    app = config["applications"][0]
    app["args"].update(args or {})
    for deployment in app["deployments"]:
        deployment.update((deployment_overrides or {}).get(deployment["name"], {}))
    return config


test_config.__test__ = False  # a helper, not a test, when imported into a test module


class ServeRun:
    """`serve run CONFIG` in its own process group, with its own local Ray; stopped with SIGINT."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.port = config["http_options"]["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "serve-config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
        self.log_path = workdir / "serve-run.log"
        self.env = {**os.environ, "MT5_MODEL": "demo", "RAY_DEDUP_LOGS": "0", **(env or {})}
        # "local": always a fresh Ray of our own, never whatever cluster /tmp/ray/ray_current_cluster names.
        self.env["RAY_ADDRESS"] = "local"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 240) -> ServeRun:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(SERVE), "run", str(self.config_path)], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"service not healthy within {timeout_s}s:\n{self.log_tail()}")

    def log_size(self) -> int:
        return len(self.log_path.read_text(errors="replace"))

    def wait_for_log(self, text: str, since: int = 0, timeout_s: float = 30) -> bool:
        """Whether `text` appears in the log after character `since` within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log_path.read_text(errors="replace")[since:]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        stop_group(self.process, timeout_s=60)


def replica_processes(run: ServeRun, deployment: str) -> list[psutil.Process]:
    """This run's replica processes of one deployment (never another cluster's)."""
    root = psutil.Process(run.process.pid)
    found = []
    for proc in root.children(recursive=True):
        try:
            if f"ServeReplica:mt5:{deployment}" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def load_client(url: str, timeout_s: float, connections: int) -> aiohttp.ClientSession:
    """The load generator's HTTP client. aiohttp, not httpx: httpx's AsyncClient drops connections now and
    then at a few hundred concurrent requests (encode/httpx#3348), which would read as the service's fault.

    A hang is `timeout_s` without a byte from the service (or without a free client connection),
    not a total: in an open-loop flood much of a request's life is spent queued in this client.
    """
    timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
    return aiohttp.ClientSession(base_url=url, timeout=timeout, connector=aiohttp.TCPConnector(limit=connections))
