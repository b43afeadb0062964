"""The benchmark checkpoint: mT5-base shapes, random weights, ModelScope layout, cached.

Random weights cost exactly the compute of the real ones (same shapes), so the
figures hold for the real model up to how many tokens it chooses to generate.
The tokenizer is the demo's real sentencepiece model (about 800 pieces): its ids
are valid ids in the 250,112-row vocabulary.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from serve_app.engine.checkpoint import MT5_BASE_SHAPE, random_mt5, save_checkpoint
from serve_app.engine.demo import demo_cache_root, demo_model_dir

BENCH_CHECKPOINT_NAME = "bench-mt5-base"


def bench_checkpoint_dir(root: str | Path | None = None) -> Path:
    return Path(root) if root else demo_cache_root() / BENCH_CHECKPOINT_NAME


def model_for_run(model: str | None, quick: bool, log: Callable[[str], None]) -> str:
    """The model an entry point runs: the one named, else the demo for a smoke run (`--quick`), else the benchmark
    checkpoint (built once)."""
    return model or ("demo" if quick else str(build_checkpoint(log=log)))


def build_checkpoint(target: str | Path | None = None, shape: dict | None = None, seed: int = 0, log=print) -> Path:
    """Build (once) an mT5-base-shaped random checkpoint in the ModelScope layout and return its directory.

    `shape` overrides MT5_BASE_SHAPE (the smoke test builds a tiny one). Built in a
    temporary directory and renamed, so an interrupted build never leaves half a model.
    """
    target = bench_checkpoint_dir(target)
    if (target / "config.json").is_file() and (target / "pytorch_model.bin").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"building the benchmark checkpoint in {target} (random weights, once) ...")
    staging = Path(tempfile.mkdtemp(prefix="bench-build-", dir=target.parent))
    try:
        model = random_mt5({**MT5_BASE_SHAPE, **(shape or {})}, seed=seed)
        save_checkpoint(model, staging / "model", layout="modelscope", model_type="mt5", tokenizer_dir=demo_model_dir())
        del model
        os.rename(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"built in {time.monotonic() - started:.0f} s")
    return target
