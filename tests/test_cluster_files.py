"""The cluster files (cluster/): generated ones are fresh, and each is valid for the tool that reads it.

No cluster needed: these run in seconds (nginx -t needs the nginx binary, which scripts/test.sh installs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.lib.nginx_front import nginx_in_front_of
from cluster import render
from cluster.grafana.dashboard import build_dashboard, metric_names
from cluster.nginx.health_sync import HealthSync
from cluster.nginx.render import render_all, render_upstreams
from tests.servers import free_port

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "cluster" / "launcher" / "aws-gpu.yaml"


def config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))


def manifest() -> dict[str, Any]:
    return yaml.safe_load(render.RAYSERVICE.read_text(encoding="utf-8"))


def test_generated_files_are_fresh() -> None:
    """Edit config.yaml (or cluster/render.py), then run `python -m cluster.render`."""
    for path, text in render.outputs().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} is stale: run python -m cluster.render"
        )
    check = subprocess.run([sys.executable, "cluster/render.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_rayservice_runs_config_yaml_with_the_gpu_profile() -> None:
    """serveConfigV2 is config.yaml, but for the GPU-sized budgets of render.GPU_PROFILE, which Serve accepts."""
    from serve_app.scheduling.config import SchedulerConfig

    served = yaml.safe_load(manifest()["spec"]["serveConfigV2"])
    assert served == render.with_gpu_profile(config())
    ours, theirs = config()["applications"][0], served["applications"][0]
    assert {k: v for k, v in ours.items() if k != "deployments"} == {
        k: v for k, v in theirs.items() if k != "deployments"
    }
    replica = next(d for d in theirs["deployments"] if d["name"] == "ModelReplica")
    local = next(d for d in ours["deployments"] if d["name"] == "ModelReplica")
    budgets = SchedulerConfig.model_validate(replica["user_config"])
    assert budgets.max_batch_rows == 256 > SchedulerConfig.model_validate(local["user_config"]).max_batch_rows
    assert replica["max_ongoing_requests"] > budgets.max_batch_rows  # room past the rows, as config.yaml says
    assert (
        replica["autoscaling_config"]["max_replicas"] == local["autoscaling_config"]["max_replicas"]
    )  # merged, not replaced
    others = [d for d in theirs["deployments"] if d["name"] != "ModelReplica"]
    assert others == [d for d in ours["deployments"] if d["name"] != "ModelReplica"]


def test_rayservice_has_a_cpu_head_and_an_autoscaling_gpu_group() -> None:
    cluster = manifest()["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (group,) = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1 == worker["resources"]["requests"]["nvidia.com/gpu"]
    # replica_gpus auto = 1 GPU per ModelReplica: one pod per replica, min..max from config.yaml.
    scaling = next(d for d in config()["applications"][0]["deployments"] if d["name"] == "ModelReplica")[
        "autoscaling_config"
    ]
    assert (group["minReplicas"], group["maxReplicas"]) == (max(1, scaling["min_replicas"]), scaling["max_replicas"])
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # KubeRay finds the Serve port by the name "serve" (Service + worker readiness probe).
    port = config()["http_options"]["port"]
    for container in (head, worker):
        assert {"name": "serve", "containerPort": port} in container["ports"]
        assert container["image"] == render.CLUSTER["image"]


@pytest.mark.parametrize(
    ("gpus", "low", "high", "pods"),
    [("auto", 1, 4, (1, 4)), (1, 2, 3, (2, 3)), (0.5, 1, 4, (1, 2)), (0.25, 2, 6, (1, 2))],
)
def test_gpu_pods_follow_replica_gpus(gpus: Any, low: int, high: int, pods: tuple[int, int]) -> None:
    data = config()
    data["applications"][0]["args"]["replica_gpus"] = gpus
    replica = next(d for d in data["applications"][0]["deployments"] if d["name"] == "ModelReplica")
    replica["autoscaling_config"].update(min_replicas=low, max_replicas=high)
    assert render.gpu_worker_bounds(data, gpus_per_pod=1) == pods


def test_a_replica_bigger_than_a_pod_is_refused() -> None:
    data = config()
    data["applications"][0]["args"]["replica_gpus"] = 2
    with pytest.raises(ValueError, match="does not fit"):
        render.gpu_worker_bounds(data, gpus_per_pod=1)


def test_launcher_yaml_is_valid_for_ray_up() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(raw))  # Ray's own schema, as `ray up` checks it
    gpu = raw["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith("g5.") and 1 <= gpu["min_workers"] < gpu["max_workers"]
    setup = "\n".join(raw["setup_commands"])
    assert setup.index("torch==2.13.0") < setup.index("-e ~/mt5")
    for command in (raw["head_start_ray_commands"][-1], raw["worker_start_ray_commands"][-1]):
        assert "--metrics-export-port=8080" in command and "RAY_AUTH_MODE=token" in command
    assert "serve deploy config.yaml" in LAUNCHER.read_text()


def test_dashboard_panels_query_the_service_metrics() -> None:
    dashboard = json.loads(render.DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["targets"] and all(t["expr"] for t in panel["targets"]) for panel in dashboard["panels"])
    names = metric_names(dashboard)
    for needed in (
        "ray_mt5_step_rows_bucket",  # live rows per decoding step
        "ray_mt5_step_seconds_bucket",  # step time
        "ray_mt5_prefill_tokens_bucket",  # prefill tokens per iteration
        "ray_mt5_queue_wait_seconds_bucket",  # time queued before starting
        "ray_mt5_requests_admitted_total",
        "ray_mt5_requests_finished_total",
        "ray_mt5_generated_tokens_total",
        "ray_serve_http_request_latency_ms_bucket",  # per-route latency
        "ray_serve_num_http_error_requests_total",  # per-route errors
        "ray_serve_deployment_replica_healthy",  # replica counts
    ):
        assert needed in names
    assert dashboard == build_dashboard()


def test_upstreams_mark_down_and_fail_open() -> None:
    text = render_upstreams(["10.0.0.2:7860", "10.0.0.1:7860", "10.0.0.1:7860"], down={"10.0.0.2:7860"})
    assert text.count("server ") == 2
    assert "server 10.0.0.2:7860 max_fails=2 fail_timeout=10s down;" in text
    assert "server 10.0.0.1:7860 max_fails=2 fail_timeout=10s;" in text
    assert "least_conn;" in text and "keepalive 32;" in text
    assert text.index("least_conn") < text.index("keepalive 32")  # nginx needs the balancer before keepalive
    everything_down = render_upstreams(["10.0.0.1:7860", "10.0.0.2:7860"], down={"10.0.0.1:7860", "10.0.0.2:7860"})
    assert " down;" not in everything_down
    with pytest.raises(ValueError):
        render_upstreams([])


def test_nginx_config_is_valid_and_says_what_we_rely_on(tmp_path: Path) -> None:
    conf = render_all(tmp_path / "nginx", ["10.0.0.1:7860", "10.0.0.2:7860"], listen="127.0.0.1:18080")
    text = conf.read_text()
    for directive in (
        # never on 503: the service's own answer (capacity, no model replica) goes to the client
        "proxy_next_upstream error timeout http_502 http_504 non_idempotent;",
        "proxy_next_upstream_tries 3;",
        "proxy_connect_timeout 2s;",
        "client_max_body_size 1m;",
        'proxy_set_header Connection "";',
        f"include {tmp_path / 'nginx' / 'upstreams.conf'};",
    ):
        assert directive in text
    read_timeout = int(text.split("proxy_read_timeout ")[1].split("s;")[0])
    assert (
        read_timeout
        > config()["http_options"]["request_timeout_s"]
        >= config()["applications"][0]["args"]["request_timeout_s"]
    )
    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed: scripts/test.sh installs it (apt-get install nginx)")
    checked = subprocess.run(
        ["nginx", "-t", "-c", str(conf), "-e", str(tmp_path / "nginx" / "error.log")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


class _Proxy(BaseHTTPRequestHandler):
    """A stand-in Serve proxy: GET /-/healthz answers with the server's current `status`."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status = self.server.status  # type: ignore[attr-defined]
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"success" if status == 200 else b"draining")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def proxies() -> Iterator[tuple[ThreadingHTTPServer, ThreadingHTTPServer, str]]:
    """A healthy proxy, one we can make unhealthy, and an address where nothing listens."""
    servers = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
        server.status = 200  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers[0], servers[1], f"127.0.0.1:{free_port()}"
    for server in servers:
        server.shutdown()
        server.server_close()


def test_health_sync_marks_failing_proxies_down_and_back_up(tmp_path: Path, proxies: tuple[Any, Any, str]) -> None:
    good, flaky, dead = proxies
    addresses = [f"127.0.0.1:{good.server_port}", f"127.0.0.1:{flaky.server_port}", dead]
    upstreams = tmp_path / "upstreams.conf"
    reloads: list[int] = []
    sync = HealthSync(upstreams, reload=lambda: reloads.append(1), fall=2, rise=2)

    sync.check(addresses)
    assert sync.down == set() and len(reloads) == 1  # one failure is not enough (fall=2)
    flaky.status = 503  # a draining proxy answers 503
    sync.check(addresses)
    assert sync.down == {dead} and f"server {dead} max_fails=2 fail_timeout=10s down;" in upstreams.read_text()
    sync.check(addresses)
    assert sync.down == {dead, addresses[1]} and len(reloads) == 3
    sync.check(addresses)
    assert len(reloads) == 3  # nothing changed: no rewrite, no reload

    flaky.status = 200
    sync.check(addresses)
    assert addresses[1] in sync.down  # rise=2: one success is not enough
    sync.check(addresses)
    assert sync.down == {dead}
    assert f"server {addresses[1]} max_fails=2 fail_timeout=10s;" in upstreams.read_text()


def test_health_sync_command_line(tmp_path: Path, proxies: tuple[Any, Any, str]) -> None:
    good, _, dead = proxies
    upstreams = tmp_path / "upstreams.conf"
    args = [
        "--once",
        "--fall",
        "1",
        "--upstreams-file",
        str(upstreams),
        "--proxy",
        f"127.0.0.1:{good.server_port}",
        "--proxy",
        dead,
    ]
    for runner in (["-m", "cluster.nginx.health_sync"], ["cluster/nginx/health_sync.py"]):
        upstreams.unlink(missing_ok=True)
        result = subprocess.run([sys.executable, *runner, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"server {dead} max_fails=2 fail_timeout=10s down;" in upstreams.read_text()


class _Relay(BaseHTTPRequestHandler):
    """A stand-in Serve proxy for POSTs: answers `status` (500 like Serve's proxy whose Ingress replica died with
    its node, else 200 echoing the body and the X-Request-ID it was sent) and counts what it received."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append((self.path, body, self.headers.get("X-Request-ID")))  # type: ignore[attr-defined]
        status = self.server.status  # type: ignore[attr-defined]
        answer = b"Request failed: The actor is unavailable" if status == 500 else body
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def relays() -> Iterator[tuple[ThreadingHTTPServer, ThreadingHTTPServer]]:
    """A stand-in proxy that answers 500 to everything and one that answers 200."""
    servers = []
    for status in (500, 200):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Relay)
        server.status, server.seen = status, []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers[0], servers[1]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_nginx_sends_a_500_once_more_and_keeps_the_proxy_that_relayed_it(relays: tuple[Any, Any]) -> None:
    """Serve's proxy answers 500 when the Ingress replica it routed to died with its node; nginx sends such a
    request once more (same body, same request id), never twice, never a POST /jobs, and a proxy that relayed
    a 500 is not marked down."""
    import httpx

    failing, healthy = relays
    with nginx_in_front_of([f"127.0.0.1:{failing.server_port}"]) as url, httpx.Client(timeout=30) as client:
        answer = client.post(f"{url}/classify", json={"text": "一"}, headers={"X-Request-ID": "resend-1"})
        assert answer.status_code == 500
        assert [(path, rid) for path, _, rid in failing.seen] == [("/classify", "resend-1")] * 2  # resent once
        assert failing.seen[0][1] == failing.seen[1][1] != b""  # the body went again
        failing.seen.clear()
        assert client.post(f"{url}/jobs", content=b"a,b\n").status_code == 500
        assert [path for path, _, _ in failing.seen] == ["/jobs"]  # a job creation is never sent twice

    failing.seen.clear()
    proxies = [f"127.0.0.1:{failing.server_port}", f"127.0.0.1:{healthy.server_port}"]
    with nginx_in_front_of(proxies) as url, httpx.Client(timeout=30) as client:
        for index in range(12):
            body = json.dumps({"text": f"文本{index}"}).encode()
            answer = client.post(f"{url}/classify", content=body, headers={"X-Request-ID": f"r{index}"})
            assert (answer.status_code, answer.content, answer.headers.get("x-request-id")) == (
                200,
                body,
                None,  # the stand-in does not echo the header; Serve's proxy does
            ), index
    # The failing proxy kept getting requests (a 500 it relayed did not mark it down: max_fails=2 would have
    # left it out for 10 s after two) and each of them was answered by the healthy one with the same body and id.
    assert len(failing.seen) >= 3, failing.seen
    answered = {rid: body for _, body, rid in healthy.seen}
    assert all(answered[rid] == body for _, body, rid in failing.seen)


def test_the_images_pins_are_read_and_a_torch_listing_is_searched_for_them() -> None:
    """cluster/kuberay/check_image.py checks, before a build, that the Dockerfile's base image and torch wheel exist;
    here (PyPI only) it can only say so. Its reading of the Dockerfile and of an index listing is checked offline."""
    sys.path.insert(0, str(ROOT / "cluster" / "kuberay"))
    try:
        import check_image
    finally:
        sys.path.pop(0)
    pins = check_image.read_pins()
    assert pins.base_image == ("rayproject/ray", f"{pins.ray}-py{pins.python}-{pins.cuda}")
    assert pins.torch_index == f"https://download.pytorch.org/whl/{pins.cuda}"
    assert f"torch=={pins.torch}" in (ROOT / "scripts" / "serve.sh").read_text()  # the same torch everywhere
    listing = "".join(
        f'<a href="/whl/{pins.cuda}/{name}#sha256=00">{name}</a>\n'
        for name in (
            f"torch-{pins.torch}%2B{pins.cuda}-cp{pins.python}-cp{pins.python}-manylinux_2_28_x86_64.whl",
            f"torch-{pins.torch}%2B{pins.cuda}-cp{pins.python}-cp{pins.python}-manylinux_2_28_aarch64.whl",
            f"torch-{pins.torch}%2B{pins.cuda}-cp312-cp312-manylinux_2_28_x86_64.whl",
            f"torch-2.12.0%2B{pins.cuda}-cp{pins.python}-cp{pins.python}-manylinux_2_28_x86_64.whl",
        )
    )
    assert check_image.torch_wheels(listing, pins) == [
        f"torch-{pins.torch}+{pins.cuda}-cp{pins.python}-cp{pins.python}-manylinux_2_28_x86_64.whl"
    ]
    ran = subprocess.run([sys.executable, "cluster/kuberay/check_image.py"], cwd=ROOT, capture_output=True, text=True)
    assert ran.returncode in (0, 1, 2) and ran.stdout.count("\n") == 2, ran.stdout + ran.stderr
