"""Fetch config.yaml's model once, in this terminal, before `serve run` deploys it.

    python -m serve_app.preflight [config.yaml]

Resolves the application's `model` (MT5_MODEL overrides it) the way every replica
will: a ModelScope or Hugging Face id is downloaded into the hub's cache with the
hub's own progress bars (size, rate, time left), and the replicas then find the
weights in the local cache (partial files are the hub's business: both hubs
write them apart from the finished snapshot). A
spec that cannot be resolved stops here, within seconds, with the project's one
message (what was asked, what failed, the fix) and exit code 2: no traceback
wall, no deployment retrying the same error. scripts/serve.sh runs this first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from serve_app.engine.errors import ModelSpecError
from serve_app.engine.spec import ResolvedSpec, resolve_spec
from serve_app.settings import AppSettings

EXIT_MODEL_UNAVAILABLE = 2


def model_spec(config_path: Path) -> str:
    """The model spec the application in `config_path` will load (MT5_MODEL taking precedence)."""
    config = yaml.safe_load(config_path.read_text())
    applications = config.get("applications") or [{}]
    return AppSettings.from_args(applications[0].get("args") or {}).model


def fetch(spec: str) -> ResolvedSpec:
    """Resolve `spec`, downloading it into the hub's cache if needed (ModelSpecError when it cannot be)."""
    return resolve_spec(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="config.yaml", type=Path)
    args = parser.parse_args(argv)
    spec = model_spec(args.config)
    started = time.monotonic()
    print(f"mt5: model {spec!r}: checking the local cache, downloading once if needed…", file=sys.stderr, flush=True)
    try:
        resolved = fetch(spec)
    except ModelSpecError as error:
        print(f"\nmt5: cannot start: {error}\n", file=sys.stderr, flush=True)
        return EXIT_MODEL_UNAVAILABLE
    print(f"mt5: model ready at {resolved.path} ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
