"""Fetch config.yaml's model once, in this terminal, before `serve run` deploys it.

    python -m serve_app.preflight [config.yaml]

Resolves the application's `model` (MT5_MODEL overrides it) the way every replica
will: a ModelScope or Hugging Face id is downloaded into the hub's cache with the
hub's own progress bars (size, rate, time left), and the replicas then find the
weights in the local cache. Both hubs write unfinished files apart from the
finished snapshot, so an interrupted fetch is never taken for a model; what one
left behind is reported before fetching again (ModelScope resumes it, Hugging
Face's client cannot, so those files are removed). A
spec that cannot be resolved stops here, within seconds, with the project's one
message (what was asked, what failed, the fix) and exit code 2: no traceback
wall, no deployment retrying the same error. scripts/serve.sh runs this first.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from serve_app.engine.errors import ModelSpecError
from serve_app.engine.spec import ResolvedSpec, find_partial_downloads, resolve_spec
from serve_app.settings import AppSettings

EXIT_MODEL_UNAVAILABLE = 2
EXIT_INTERRUPTED = 130


def model_spec(config_path: Path) -> str:
    """The model spec the application in `config_path` will load (MT5_MODEL taking precedence)."""
    config = yaml.safe_load(config_path.read_text())
    applications = config.get("applications") or [{}]
    return AppSettings.from_args(applications[0].get("args") or {}).model


def fetch(spec: str) -> ResolvedSpec:
    """Resolve `spec`, downloading it into the hub's cache if needed (ModelSpecError when it cannot be).

    The hubs download on pool threads that a Ctrl+C does not stop (the pool waits for every file to
    finish), so the work runs on a thread of its own and Ctrl+C leaves at once (main); what it was writing
    stays a partial file, reported by the next start (find_partial_downloads)."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["resolved"] = resolve_spec(spec)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread as it is
            outcome["error"] = error

    worker = threading.Thread(target=work, name="mt5-fetch", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)  # a Ctrl+C lands here, in the main thread
    if "error" in outcome:
        raise outcome["error"]
    return outcome["resolved"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="config.yaml", type=Path)
    args = parser.parse_args(argv)
    spec = model_spec(args.config)
    started = time.monotonic()
    print(f"mt5: model {spec!r}: checking the local cache, downloading once if needed…", file=sys.stderr, flush=True)
    partial = find_partial_downloads(spec)
    if partial is not None:
        print(f"mt5: {partial.describe(spec)}", file=sys.stderr, flush=True)
        partial.discard_if_useless()
    try:
        resolved = fetch(spec)
    except ModelSpecError as error:
        print(f"\nmt5: cannot start: {error}\n", file=sys.stderr, flush=True)
        return EXIT_MODEL_UNAVAILABLE
    except KeyboardInterrupt:
        # Both hubs keep unfinished files apart from the snapshot: nothing half-written is taken for a model.
        print(
            f"\nmt5: interrupted while fetching {spec!r}; run the same command again to carry on.",
            file=sys.stderr,
            flush=True,
        )
        # Not `return`: interpreter exit joins the hub's download pool, i.e. waits for every file to finish.
        os._exit(EXIT_INTERRUPTED)
    print(f"mt5: model ready at {resolved.path} ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
