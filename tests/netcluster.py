"""A real multi-node Ray cluster on one machine: one Linux network namespace per Ray node.

Serve starts an HTTP proxy on every node, all on http_options.port (7860). Several
Ray nodes sharing one network stack would fight over that port, so each node gets
its own namespace, joined to the others by a bridge in the root namespace:

    root ns: bridge mt5b<pid> 10.231.N.1  ── veth ──  ns mt5c<pid>-0 (head)  10.231.N.10
                                          ── veth ──  ns mt5c<pid>-1 (node)  10.231.N.11 ...

The test process stays in the root namespace and reaches every node over the bridge,
like a load balancer in front of a cluster. Names carry the test's pid so two runs
never clash, and setup removes what a crashed run (pid gone) left behind.
Needs root (ip netns).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.lib.processes import start_group, stop_group

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFIX = "mt5c"  # namespaces mt5c<pid>-<i>, bridge mt5b<pid>, veths mt5v<pid>x<i>
GCS_PORT = 6379
DASHBOARD_PORT = 8265
METRICS_PORT = 8080
SERVE_PORT = 7860


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def netns_available() -> str | None:
    """None when network namespaces can be made here, else why not (the cluster tests fail with it)."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None if made.returncode == 0 else f"ip netns add failed: {made.stderr.strip()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_processes(netns: str) -> None:
    """SIGKILL whatever runs inside a namespace: how a machine dies, and what teardown needs."""
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _remove_network(owner: int) -> None:
    """Delete the namespaces, veths and bridge of the run with pid `owner`."""
    for netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n"):
        name = netns.split(" ")[0]
        if name.startswith(f"{PREFIX}{owner}-"):
            _kill_netns_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for link in re.findall(rf"^\d+: (mt5[bv]{owner}(?:x\d+)?)[@:]", links, flags=re.M):
        subprocess.run(["ip", "link", "del", link], capture_output=True)


def remove_leftovers() -> None:
    """Remove what earlier runs that crashed without teardown left (their pid is gone)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    owners = {int(pid) for pid in re.findall(rf"^{PREFIX}(\d+)-", names, flags=re.M)}
    owners |= {int(pid) for pid in re.findall(r"^\d+: mt5[bv](\d+?)(?:x\d+)?[@:]", links, flags=re.M)}
    for owner in owners:
        if owner != os.getpid() and not _alive(owner):
            _remove_network(owner)
            shutil.rmtree(f"/tmp/{PREFIX}{owner}", ignore_errors=True)


def _free_subnet() -> int:
    """A /24 under 10.231.0.0/16 that no interface on this machine uses yet."""
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    start = os.getpid() % 200 + 20
    for offset in range(250):
        third = (start + offset) % 250 + 1
        if f" 10.231.{third}." not in used:
            return third
    raise RuntimeError("no free 10.231.x.0/24 subnet")


def auth_headers() -> dict[str, str]:
    """Ray's token (token auth is on by default) for the dashboard's REST API."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        token = path.read_text().strip() if path.exists() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass
class NodeSpec:
    name: str
    num_cpus: float
    num_gpus: int = 0


@dataclass
class Node:
    spec: NodeSpec
    index: int
    netns: str
    ip: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://{self.ip}:{SERVE_PORT}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.ip}:{METRICS_PORT}/metrics"


@dataclass
class NetCluster:
    """Head (index 0) plus worker nodes, each `ray start --block` inside its own namespace."""

    specs: list[NodeSpec]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.owner = os.getpid()
        self.bridge = f"mt5b{self.owner}"
        self.temp_root = Path(f"/tmp/{PREFIX}{self.owner}")  # short: Ray's unix socket paths have a length limit

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def gcs_address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.spec.name == name)

    # -- network -------------------------------------------------------------------------
    def create_network(self) -> None:
        remove_leftovers()
        _remove_network(self.owner)
        subnet = _free_subnet()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"10.231.{subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, spec in enumerate(self.specs):
            netns, host_end, ns_end = f"{PREFIX}{self.owner}-{index}", f"mt5v{self.owner}x{index}", f"mt5n{index}"
            ip = f"10.231.{subnet}.{10 + index}"
            subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", netns)
            _ip("link", "set", host_end, "master", self.bridge)
            _ip("link", "set", host_end, "up")
            _ip("addr", "add", f"{ip}/24", "dev", ns_end, netns=netns)
            _ip("link", "set", ns_end, "up", netns=netns)
            _ip("link", "set", "lo", "up", netns=netns)
            self.nodes.append(Node(spec, index, netns, ip, self.workdir / f"node-{spec.name}.log"))

    # -- Ray -------------------------------------------------------------------------------
    def _ray_env(self) -> dict[str, str]:
        # No RAY_ADDRESS (never someone else's cluster) and no MT5_* (the config's args decide).
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS" and not key.startswith("MT5_")}
        env.update(
            {
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_DEDUP_LOGS": "0",
                # Token auth is on by default only for local clusters; a multi-node cluster sets it everywhere.
                "RAY_AUTH_MODE": "token",
                # Notice a dead node in ~3 s instead of ~30 s, so the failover test stays short.
                "RAY_health_check_period_ms": "1000",
                "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3",
                **self.env,
            }
        )
        return env

    def _start_args(self, node: Node) -> list[str]:
        args = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--disable-usage-stats",
            f"--node-ip-address={node.ip}",
            f"--num-cpus={node.spec.num_cpus}",
            f"--num-gpus={node.spec.num_gpus}",
            f"--metrics-export-port={METRICS_PORT}",
            f"--object-store-memory={200 * 1024 * 1024}",
            f"--temp-dir={self.temp_root / node.spec.name}",
        ]
        if node.index == 0:
            return args + [
                "--head",
                f"--port={GCS_PORT}",
                "--include-dashboard=true",
                "--dashboard-host=0.0.0.0",
                f"--dashboard-port={DASHBOARD_PORT}",
            ]
        return args + [f"--address={self.gcs_address}"]

    def start_node(self, node: Node) -> None:
        node.process = start_group(
            ["ip", "netns", "exec", node.netns, *self._start_args(node)], node.log, ROOT, self._ray_env(), append=True
        )

    def start(self, timeout_s: float = 180) -> NetCluster:
        self.create_network()
        self.start_node(self.head)
        self._wait(lambda: self.alive_nodes() >= 1, timeout_s, "the head node")
        for node in self.nodes[1:]:
            self.start_node(node)
        self._wait(lambda: self.alive_nodes() >= len(self.nodes), timeout_s, f"{len(self.nodes)} nodes")
        return self

    def _wait(self, ready: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                if (
                    node.process is not None
                    and node.process.poll() is not None
                    and node.process.returncode not in (None, -9)
                ):
                    raise RuntimeError(
                        f"ray start on {node.spec.name} exited {node.process.returncode}:\n{self.log_tail(node)}"
                    )
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{what} not up within {timeout_s}s:\n{self.log_tail(self.head)}")

    def alive_nodes(self) -> int:
        nodes = self.api("/nodes?view=summary")["data"]["summary"]
        return sum(1 for node in nodes if node.get("raylet", {}).get("state") == "ALIVE")

    def api(self, path: str, timeout: float = 5) -> Any:
        """GET the head's dashboard REST API (with Ray's auth token)."""
        response = httpx.get(f"{self.dashboard_url}{path}", headers=auth_headers(), timeout=timeout)
        response.raise_for_status()
        return response.json()

    def log_tail(self, node: Node, lines: int = 40) -> str:
        return "\n".join(node.log.read_text(errors="replace").splitlines()[-lines:]) if node.log.exists() else ""

    def kill_node(self, name: str) -> None:
        """Crash a node: its `ray start --block` group, then anything else left in its namespace."""
        node = self.node(name)
        stop_group(node.process, signal.SIGKILL)
        _kill_netns_processes(node.netns)

    def serve(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """The `serve` CLI against this cluster's dashboard, from the root namespace (like a laptop)."""
        return subprocess.run(
            [str(BIN / "serve"), *args, "--address", self.dashboard_url],
            cwd=ROOT,
            env=self._ray_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # -- Serve -----------------------------------------------------------------------------
    def deploy(self, config_path: Path, app: str = "mt5", timeout_s: float = 300) -> dict[str, Any]:
        """`serve deploy` the config and wait until the application is RUNNING; its details."""
        result = self.serve("deploy", str(config_path))
        if result.returncode != 0:
            raise RuntimeError(f"serve deploy failed:\n{result.stdout}\n{result.stderr}")
        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline:
            details = self.app_details(app)
            status = details and details["status"]
            if status == "RUNNING":
                return details
            if status == "DEPLOY_FAILED":
                raise RuntimeError(f"deploy failed: {details.get('message')}")
            time.sleep(2)
        raise TimeoutError(f"application {app} not RUNNING within {timeout_s}s (last status {status})")

    def app_details(self, app: str = "mt5") -> dict[str, Any] | None:
        """Serve's view of one application (what `serve status` shows, plus replica placement)."""
        try:
            return self.api("/api/serve/applications/").get("applications", {}).get(app)
        except httpx.HTTPError:
            return None

    def actors(self) -> list[dict[str, Any]]:
        """Ray's actor table (the state API behind `ray list actors`)."""
        return self.api("/api/v0/actors?limit=10000&detail=false", timeout=30)["data"]["result"]["result"]

    def replica_counts(self, app: str = "mt5") -> dict[str, tuple[int, int]]:
        """deployment -> (RUNNING replicas, autoscaler's target)."""
        details = self.app_details(app) or {"deployments": {}}
        return {
            name: (
                sum(1 for replica in deployment["replicas"] if replica["state"] == "RUNNING"),
                deployment["target_num_replicas"],
            )
            for name, deployment in details["deployments"].items()
        }

    def save_logs(self, dest: Path) -> None:
        """Keep each node's Serve logs (controller, proxies, replicas) for a look after the run."""
        for node in self.nodes:
            logs = self.temp_root / node.spec.name / "session_latest" / "logs" / "serve"
            if logs.is_dir():
                shutil.copytree(logs, dest / node.spec.name, dirs_exist_ok=True)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            stop_group(node.process, signal.SIGKILL)
        _remove_network(self.owner)
        shutil.rmtree(self.temp_root, ignore_errors=True)
