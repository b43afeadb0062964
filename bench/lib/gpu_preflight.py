"""Before a GPU run spends its minutes: can `python -m bench gpu` run here at all?

    python3 -m bench.lib.gpu_preflight --out "$OUT" [--device cuda]

Checks, in seconds and before any work (no checkpoint built, no model loaded): the Python version, every module
the suite imports (third-party and the project's own, so a missing pydantic shows here and not after a 2 GB
checkpoint build), and that torch sees a CUDA device when `--device cuda`. Writes one line to <out>/preflight.txt,
"ok: ..." with the versions, or "missing: ..." naming each problem, and exits 0 or 1. Imports nothing from
outside the standard library before its checks, so it always gets to write that line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

MIN_PYTHON = (3, 10)  # pyproject.toml's requires-python
# Third-party modules the suite needs, and the project's modules whose imports pull in the rest.
THIRD_PARTY = ("torch", "transformers", "tokenizers", "sentencepiece", "pydantic", "numpy", "safetensors", "yaml")
PROJECT = (
    "serve_app.pipeline",
    "serve_app.scheduling.lanes",
    "serve_app.engine.graphed_step",
    "bench.gpu",
    "bench.lib.engine_work",
    "bench.lib.scheduler_loop",
    "bench.lib.baseline",
    "bench.lib.probabilities",
    "bench.lib.checkpoint",
)


def problems(device: str) -> tuple[list[str], dict[str, str]]:
    """What stops the suite on this machine (empty: nothing), and the versions found."""
    found: list[str] = []
    versions = {"python": sys.version.split()[0]}
    if sys.version_info[:2] < MIN_PYTHON:
        found.append(f"Python {versions['python']} (the project needs >= {'.'.join(map(str, MIN_PYTHON))})")
    for name in (*THIRD_PARTY, *PROJECT):
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure is the answer, named
            found.append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        if name in THIRD_PARTY:
            versions[name] = str(getattr(module, "__version__", "?"))
    if device.startswith("cuda") and "torch" in versions:
        import torch

        versions["cuda"] = str(torch.version.cuda)
        if not torch.cuda.is_available():
            found.append(f"CUDA (torch {torch.__version__}, CUDA build {torch.version.cuda}, sees no usable device)")
        else:
            versions["gpu"] = torch.cuda.get_device_name(0)
    return found, versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for preflight.txt (the device tool's $OUT)")
    parser.add_argument("--device", default="cuda", help="cuda (a device must be seen) or cpu")
    args = parser.parse_args(argv)
    found, versions = problems(args.device)
    line = ("missing: " + "; ".join(found)) if found else "ok: " + ", ".join(f"{k} {v}" for k, v in versions.items())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preflight.txt").write_text(line + "\n", encoding="utf-8")
    print(f"bench gpu preflight: {line}", file=sys.stderr if found else sys.stdout)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
