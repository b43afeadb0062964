"""Slow and abandoned clients against the shipped config.yaml under `serve run` (issue 40, item 3).

A storm of clients that trickle their body a byte a second or hang up mid-body (bench/lib/storm.py), while a
well-behaved client keeps classifying: the slow ones are cut off at `body_timeout_s` with 408, the well-behaved
one is answered every time, and no connection is left open in Serve's proxy afterwards. What the storm does to
the well-behaved client's p95 and to memory is a benchmark figure (`python -m bench storm`, BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest
import yaml

from bench.lib.serve_run import CONFIG
from bench.lib.storm import storm
from tests.servers import ServeRun

pytestmark = pytest.mark.service

BODY_TIMEOUT_S = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["applications"][0]["args"]["body_timeout_s"]


def proxy_process(run: ServeRun) -> psutil.Process:
    [proxy] = run.processes("ProxyActor")
    return proxy


def open_connections(proxy: psutil.Process, port: int) -> int:
    """Client connections the proxy holds on its HTTP port."""
    return sum(1 for c in proxy.net_connections(kind="tcp") if c.laddr and c.laddr.port == port and c.raddr)


def test_slow_bodies_are_cut_off_and_abandoned_ones_leave_nothing_behind(served: ServeRun) -> None:
    proxy = proxy_process(served)
    before = open_connections(proxy, served.port)
    log_from = served.log_size()
    seconds = BODY_TIMEOUT_S + 4  # every slow client is cut off once; the reconnected ones are stopped by the end
    statuses: list[int] = []

    async def well_behaved(until: float) -> None:
        async with httpx.AsyncClient(base_url=served.url, timeout=60, trust_env=False) as client:
            index = 0
            while time.monotonic() < until:
                body = {"text": f"客户端正常发送的文本 {index}", "labels": ["体育", "财经"]}
                statuses.append((await client.post("/classify", json=body)).status_code)
                index += 1

    async def both():
        until = time.monotonic() + seconds
        report, _ = await asyncio.gather(storm(served.url, seconds, slow=40, abandoned=40), well_behaved(until))
        return report

    report = asyncio.run(both())
    print("storm:", report.as_dict(), "well-behaved answers:", len(statuses))
    assert report.connect_errors == 0 and report.abandoned >= 40, report.as_dict()
    # Every slow client was answered 408 once its body had not arrived within body_timeout_s (none otherwise).
    assert report.slow_answers == {"408": 40}, report.as_dict()
    assert all(BODY_TIMEOUT_S <= took < BODY_TIMEOUT_S + 3 for took in report.slow_cut_after_s), report.as_dict()
    assert statuses and set(statuses) == {200}, statuses
    # Nothing left behind: the proxy's client connections are back to where they were (the storm's closed).
    deadline = time.monotonic() + 15
    while open_connections(proxy, served.port) > before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert open_connections(proxy, served.port) <= before, (before, open_connections(proxy, served.port))
    # Refusals and hang-ups are not faults: no traceback in the service's log for any of them.
    assert "Traceback" not in served.log_text()[log_from:], served.log_text()[log_from:][-3000:]
    assert httpx.post(f"{served.url}/classify", json={"text": "之后", "labels": ["体育", "财经"]}).status_code == 200
