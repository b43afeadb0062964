"""The machine a figure was measured on, named as `lscpu` names it, with the CPU features that decide precision."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

# CPU flags that decide which number formats run natively (bf16 dot products, int8 dot products, AMX tiles).
FEATURES = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f")


def log(prefix: str, message: str) -> None:
    print(f"[bench {prefix} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def lscpu_model() -> str:
    """`lscpu`'s "Model name" (e.g. "AMD EPYC 9R45"), or /proc/cpuinfo's where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_description() -> dict[str, Any]:
    """What the page names beside every figure: cores, CPU model and features, memory, GPU, torch."""
    import torch

    flags = cpu_flags()
    features = [name for name in FEATURES if name in flags]
    try:
        memory_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        memory_gib = 0.0
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cores = os.cpu_count()
    description = (
        f"{cores}-core {lscpu_model()} ({', '.join(features) or 'none of ' + '/'.join(FEATURES)}), "
        f"{memory_gib:.0f} GiB, {gpu}"
    )
    return {
        "description": description,
        "cpu": lscpu_model(),
        "cores": cores,
        "cpu_features": features,
        "memory_gib": round(memory_gib, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def run_header(command: str, argv: list[str]) -> dict[str, Any]:
    """When, how and on what an entry point ran: the head of its results file."""
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": f".venv/bin/python -m bench {command}" + (" " + shlex.join(argv) if argv else ""),
        "machine": machine_description(),
    }
