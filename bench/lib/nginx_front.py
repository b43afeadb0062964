"""A real nginx from cluster/nginx's template on a loopback port, in front of the given Serve proxies."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.lib.processes import start_group, stop_group
from bench.lib.serve_run import ROOT, free_port
from cluster.nginx.render import render_all


@contextmanager
def nginx_in_front_of(proxies: list[str], timeout_s: float = 20) -> Iterator[str]:
    """Yields nginx's URL; nginx and its state directory are gone afterwards."""
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed: scripts/test.sh installs it (apt-get install nginx)")
    state_dir = Path(tempfile.mkdtemp(prefix="mt5-nginx-"))
    state_dir.chmod(0o755)  # nginx workers run as nobody
    listen = f"127.0.0.1:{free_port()}"
    conf = render_all(state_dir, proxies, listen=listen)
    process = start_group(
        ["nginx", "-c", str(conf), "-e", str(state_dir / "error.log"), "-g", "daemon off;"],
        state_dir / "nginx.out",
        ROOT,
        dict(os.environ),
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"http://{listen}/lb-healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(state_dir / 'error.log').read_text(errors='replace')}")
            time.sleep(0.2)
        yield f"http://{listen}"
    finally:
        stop_group(process, signal.SIGTERM, timeout_s=15)
        shutil.rmtree(state_dir, ignore_errors=True)
