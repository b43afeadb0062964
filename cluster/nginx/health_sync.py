"""Active health checks for nginx in front of Serve: poll each proxy, mark dead ones `down`.

Open-source nginx only notices a dead upstream when a real request fails on it. This
loop asks every Serve proxy GET /-/healthz (200 "success" when it can route; 503 while
it drains before its node is removed) every --interval seconds, and after --fall
failures in a row marks it `down` in the upstream file, after --rise successes brings
it back, then reloads nginx (graceful: in-flight requests finish).

    python -m cluster.nginx.health_sync --upstreams-file /etc/mt5-nginx/upstreams.conf \\
        --nginx-pid /etc/mt5-nginx/nginx.pid --dashboard http://<head>:8265

--dashboard discovers proxies from the Ray cluster's alive nodes (autoscaled nodes
appear and disappear by themselves); --proxy host:port lists them by hand instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as `python cluster/nginx/health_sync.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cluster.nginx.render import render_upstreams, write_atomically  # noqa: E402

logger = logging.getLogger("health_sync")


def probe(proxy: str, timeout_s: float = 2.0) -> bool:
    """True when the proxy answers GET /-/healthz with 200."""
    try:
        return httpx.get(f"http://{proxy}/-/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def ray_token_headers() -> dict[str, str]:
    """Ray's auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), if there is one."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def discover_proxies(dashboard: str, serve_port: int, timeout_s: float = 5.0) -> list[str]:
    """host:port of a Serve proxy on every alive Ray node (EveryNode puts one on each node with replicas)."""
    response = httpx.get(f"{dashboard.rstrip('/')}/nodes?view=summary", headers=ray_token_headers(), timeout=timeout_s)
    response.raise_for_status()
    nodes = response.json()["data"]["summary"]
    return sorted(
        f"{node['raylet']['nodeManagerAddress']}:{serve_port}"
        for node in nodes
        if node.get("raylet", {}).get("state") == "ALIVE"
    )


@dataclass
class HealthSync:
    """Failure/success streaks per proxy, and the upstream file they produce."""

    upstreams_file: Path
    reload: Callable[[], None]
    fall: int = 2
    rise: int = 2
    probe: Callable[[str], bool] = probe
    down: set[str] = field(default_factory=set)
    _streak: dict[str, int] = field(default_factory=dict)  # >0 successes, <0 failures in a row

    def check(self, proxies: list[str]) -> bool:
        """Probe every proxy once; rewrite the file and reload nginx if the picture changed."""
        # In parallel: a dead node costs one probe timeout per round, not one per dead node.
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(proxies)))) as pool:
            results = dict(zip(proxies, pool.map(self.probe, proxies), strict=True))
        for proxy, ok in results.items():
            streak = self._streak.get(proxy, 0)
            streak = max(streak, 0) + 1 if ok else min(streak, 0) - 1
            self._streak[proxy] = streak
            if proxy not in self.down and streak <= -self.fall:
                logger.warning("proxy %s failed %d health checks: marking down", proxy, -streak)
                self.down.add(proxy)
            elif proxy in self.down and streak >= self.rise:
                logger.info("proxy %s healthy again", proxy)
                self.down.discard(proxy)
        self.down &= set(proxies)
        if not proxies:
            return False
        changed = write_atomically(self.upstreams_file, render_upstreams(proxies, self.down))
        if changed:
            self.reload()
        return changed


def reload_nginx(pid_file: Path | None, command: str | None) -> Callable[[], None]:
    """SIGHUP to nginx's master (re-reads config, old workers finish their requests), or a command."""

    def run() -> None:
        if command:
            subprocess.run(command, shell=True, check=False)
        elif pid_file and pid_file.exists():
            os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstreams-file", type=Path, required=True)
    parser.add_argument("--proxy", action="append", default=[], help="a Serve proxy host:port (repeatable)")
    parser.add_argument("--dashboard", help="Ray dashboard URL: discover proxies from alive nodes")
    parser.add_argument("--serve-port", type=int, default=7860)
    parser.add_argument("--nginx-pid", type=Path, help="nginx master pid file (reload by SIGHUP)")
    parser.add_argument("--reload-command", help="run this to reload instead, e.g. 'nginx -s reload'")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--fall", type=int, default=2, help="failures in a row before a proxy is marked down")
    parser.add_argument("--rise", type=int, default=2, help="successes in a row before it is back")
    parser.add_argument("--once", action="store_true", help="check once and exit")
    args = parser.parse_args(argv)
    if not args.proxy and not args.dashboard:
        parser.error("give --proxy host:port (repeatable) or --dashboard URL")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sync = HealthSync(args.upstreams_file, reload_nginx(args.nginx_pid, args.reload_command), args.fall, args.rise)
    known = list(args.proxy)
    while True:
        if args.dashboard:
            try:  # keep the last known list while the head is unreachable
                known = sorted(set(args.proxy) | set(discover_proxies(args.dashboard, args.serve_port)))
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                logger.warning("node discovery failed (%s); keeping %d known proxies", exc, len(known))
        sync.check(known)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
