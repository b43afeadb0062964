"""Issue 7: no configuration we ship exposes Ray's own ports (dashboard/Job API, GCS) beyond
loopback without Ray's token auth, and nothing we ship turns token auth off."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [
    ROOT / "config.yaml",
    ROOT / "scripts" / "serve.sh",
    ROOT / "scripts" / "test.sh",
    *sorted((ROOT / "cluster").rglob("*.yaml")),
    *sorted((ROOT / "cluster").rglob("*.template")),
    *sorted((ROOT / "cluster").rglob("Dockerfile")),
    ROOT / "README.md",
    ROOT / "cluster" / "README.md",
]
RAY_PORTS = {"8265", "6379", "10001", "52365"}


def test_shipped_files_are_present():
    assert (ROOT / "cluster" / "kuberay" / "rayservice.yaml").is_file()
    assert (ROOT / "cluster" / "launcher" / "aws-gpu.yaml").is_file()
    assert (ROOT / "cluster" / "nginx" / "nginx.conf.template").is_file()


def test_nothing_we_ship_disables_ray_token_auth():
    for path in SHIPPED:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"RAY_AUTH_MODE\s*[=:]\s*['\"]?disabled", text), f"{path} turns Ray token auth off"
        assert "mode: disabled" not in text, path


def test_kuberay_dashboard_on_all_interfaces_only_with_token_auth():
    manifest = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    head_params = cluster["headGroupSpec"]["rayStartParams"]
    if head_params.get("dashboard-host", "127.0.0.1") not in ("127.0.0.1", "localhost"):
        assert cluster.get("authOptions", {}).get("mode") == "token"
    # the Ray ports are container ports on the cluster network, never a LoadBalancer/NodePort of ours
    for service in (manifest["spec"].get("serveService"), manifest["spec"].get("headService")):
        if service:
            assert service.get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


def test_launcher_starts_ray_with_token_auth_wherever_the_dashboard_listens_widely():
    launcher = yaml.safe_load((ROOT / "cluster" / "launcher" / "aws-gpu.yaml").read_text())
    commands = [" ".join(launcher.get(key) or []) for key in ("head_start_ray_commands", "worker_start_ray_commands")]
    assert all("ray start" in command for command in commands)
    for command in commands:
        for start in re.findall(r"[^;&|]*ray start[^;&|]*", command):
            wide = "--dashboard-host=0.0.0.0" in start or "--dashboard-host 0.0.0.0" in start
            if wide or "--head" not in start:
                assert "RAY_AUTH_MODE=token" in start, f"ray start without token auth: {start.strip()}"


def test_load_balancer_forwards_only_to_serve_proxies():
    from cluster.nginx.render import render_nginx_conf, render_upstreams

    conf = render_nginx_conf("127.0.0.1:8080", Path("/tmp/state"), Path("/tmp/state/upstreams.conf"))
    upstreams = render_upstreams(["10.0.0.5:7860", "10.0.0.6:7860"])
    targets = re.findall(r"proxy_pass\s+http://([^;/\s]+)", conf)
    assert targets and set(targets) == {"mt5_serve"}
    servers = re.findall(r"server\s+([\d.]+):(\d+)", upstreams)
    assert servers and all(port == "7860" for _, port in servers)
    assert not any(port in conf for port in RAY_PORTS)


def test_local_runs_keep_the_dashboard_on_loopback():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    # serve run starts Ray with its defaults: dashboard on 127.0.0.1; the file must not widen it.
    assert "dashboard_host" not in str(config) and "dashboard-host" not in str(config)
    assert config["http_options"]["port"] not in {int(port) for port in RAY_PORTS}
