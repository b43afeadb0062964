"""`serve run` on a copy of config.yaml, as a user runs it: its own process group, its own local Ray, a loopback port.

The benchmarks and the tests start the service through this one class.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from bench.lib.processes import start_group, stop_group

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.yaml"
SERVE = Path(sys.executable).with_name("serve")


# Ports handed out here lie between Ray's worker ports (10002-19999 by default) and the kernel's
# ephemeral range (from 32768), where Ray's own randomly chosen ports (metrics export, agents) fall:
# a port that was free when chosen cannot then be taken by the Ray the service starts.
PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A loopback port free now, outside the ranges Ray picks its own ports from."""
    import random

    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {PORT_RANGE}")


def shipped_config(
    port: int,
    deployment_overrides: dict[str, dict[str, Any]] | None = None,
    args: dict[str, Any] | None = None,
    config_path: Path = CONFIG,
) -> dict[str, Any]:
    """config.yaml as shipped, on a loopback port, with changes to deployments' options and to the app's args."""
    config = copy.deepcopy(yaml.safe_load(config_path.read_text()))
    config["http_options"].update({"host": "127.0.0.1", "port": port})
    app = config["applications"][0]
    app["args"].update(args or {})
    for deployment in app["deployments"]:
        deployment.update((deployment_overrides or {}).get(deployment["name"], {}))
    return config


class ServeRun:
    """`serve run CONFIG` started from `tree` (default: this repository), stopped with SIGINT.

    `tree` is another checkout (an earlier release, say): Serve's workers import `serve_app` from it."""

    def __init__(
        self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None, tree: Path = ROOT
    ) -> None:
        self.config = config
        self.tree = tree
        self.port = config["http_options"]["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "serve-config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
        self.log_path = workdir / "serve-run.log"
        self.env = {**os.environ, "MT5_MODEL": "demo", "RAY_DEDUP_LOGS": "0", **(env or {})}
        if tree != ROOT:
            self.env["PYTHONPATH"] = str(tree)
        # "local": always a fresh Ray of our own, never whatever cluster /tmp/ray/ray_current_cluster names.
        self.env["RAY_ADDRESS"] = "local"
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> ServeRun:
        """Start `serve run` and return at once (start() also waits until it answers /healthz)."""
        self.process = start_group([str(SERVE), "run", str(self.config_path)], self.log_path, self.tree, self.env)
        return self

    def start(self, timeout_s: float = 240) -> ServeRun:
        self.launch()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                answer = httpx.get(f"{self.url}/healthz", timeout=2, trust_env=False)
                if (
                    answer.status_code == 200
                    and answer.headers.get("content-type", "").startswith("application/json")
                    and answer.json().get("status") == "ok"
                ):
                    return self  # our Ingress, not whatever else might answer on the port
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"service not healthy within {timeout_s}s:\n{self.log_tail()}")

    def processes(self, marker: str) -> list[psutil.Process]:
        """This run's Ray worker processes whose command line holds `marker`: "ProxyActor" (Serve's HTTP proxy),
        "ServeReplica:mt5:Ingress" (a deployment's replicas), ..."""
        found = []
        for proc in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if marker in " ".join(proc.cmdline()):
                    found.append(proc)
            except psutil.NoSuchProcess:
                continue
        return found

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_size(self) -> int:
        return len(self.log_text())

    def wait_for_log(self, text: str, since: int = 0, timeout_s: float = 30) -> bool:
        """Whether `text` appears in the log after character `since` within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log_text()[since:]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Ctrl+C, as a user stops it (Serve drains its replicas, ~10 s); SIGTERM ends it in ~3 s."""
        stop_group(self.process, sig, timeout_s=60)
