"""The GPU figures of issues 5, 11 and 12 in one command, without Ray: for a session lent a GPU machine.

    bash bench/gpu_wheels.sh                                   # here, once: the wheels the GPU box lacks, into .wheels/
    # on the GPU box (the device tool's run, carry [".wheels"]):
    bash bench/gpu_suite.sh "$OUT"
    # here, the same code path on the demo model in seconds:
    .venv/bin/python -m bench.gpu_suite --device cpu --model demo --quick --out /tmp/gpu-suite

Ray's wheel is too large to carry to the lent machine, so this measures the engine and the serving
core (the scheduler lanes, bench.scheduler_loop) directly, on the mT5-base-shaped checkpoint:
- the engine against the one-at-a-time baseline (bench.levers' ceiling lever), and the GPU lever
  (one augment request's latency, classify at batch 64, peak GPU memory);
- per workload, 32 closed-loop clients against the scheduler and the engine ceiling at batch 32:
  the serving core's share of the ceiling (issue 11, without Ray's hops);
- a lone request through the scheduler, against the engine alone at batch 1;
- label probabilities in bfloat16 against float32 (bench.fidelity's comparison, a few inputs).

Each part is timed and written to `<out>/gpu_suite.json` as soon as it ends, so a run cut short by
the machine's time limit still returns what it finished; `<out>/gpu_suite.md` is the summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import scheduler_loop
from bench.run import log, machine_description

# Closed-loop windows (seconds) per part: full, and --quick for a smoke run on the demo model.
WINDOWS = {"full": {"warmup": 5.0, "duration": 20.0, "lone_warmup": 2.0, "lone_duration": 8.0},
           "quick": {"warmup": 0.5, "duration": 1.5, "lone_warmup": 0.2, "lone_duration": 0.8}}


def parts(args: argparse.Namespace, model: str) -> dict[str, Callable[[], Any]]:
    """The suite's parts, in the order they run: cheapest and most wanted first."""
    window = WINDOWS["quick" if args.quick else "full"]

    def levers() -> Any:
        from bench import levers as bench_levers

        argv = ["--model", model, "--device", args.device, "--dtype", args.dtype, "--levers", "ceiling", "gpu", "--no-md",
                "--out", str(args.out / "levers.json"), "--repeats", "1" if args.quick else "3"]
        if args.quick:
            argv += ["--ceiling-sequential", "2"]
        return bench_levers.main(argv)["levers"]

    def serving_core(workload: str, clients: int, warmup: float, duration: float) -> Callable[[], Any]:
        return lambda: scheduler_loop.measure(model, workload, clients, duration, warmup, device=args.device, dtype=args.dtype,
                                              ceiling_repeats=1 if args.quick else 3)

    def fidelity() -> Any:
        from bench import fidelity as bench_fidelity

        return bench_fidelity.main(["--models", model, "--device", args.device, "--dtypes", "bfloat16", "--inputs", "8" if args.quick else "64",
                                    "--no-md", "--out", str(args.out / "fidelity.json")])

    return {
        "levers": levers,
        "serving_core_augment": serving_core("augment", args.clients, window["warmup"], window["duration"]),
        "serving_core_classify": serving_core("classify", args.clients, window["warmup"], window["duration"]),
        "lone_augment": serving_core("augment", 1, window["lone_warmup"], window["lone_duration"]),
        "lone_classify": serving_core("classify", 1, window["lone_warmup"], window["lone_duration"]),
        "fidelity": fidelity,
    }


def summary(results: dict[str, Any]) -> str:
    """The figures issue 11 and issue 5 ask for, one line each (missing parts say why)."""
    machine = results["machine"]
    lines = [f"# GPU suite on {machine['description']}: device {results['device']} (torch {machine['torch']}, CUDA {results['cuda']}), {results['date']}", ""]
    for name, part in results["parts"].items():
        if "error" in part:
            lines.append(f"- {name}: failed after {part['seconds']:.0f} s: {part['error'].splitlines()[-1]}")
            continue
        value = part["result"]
        if name.startswith("serving_core") or name.startswith("lone"):
            loop, engine = value["scheduler_loop"], value["engine_ceiling"]
            p50 = f"{loop['p50_s']:.3f} s" if loop["p50_s"] is not None else "n/a"
            lines.append(f"- {name}: scheduler {loop['requests_per_s']:.2f} req/s (p50 {p50}) against the engine's "
                         f"{engine['requests_per_s']:.2f} at batch {engine['batch']} ({engine['dtype']}): **{value['share_of_ceiling']:.0%}** ({part['seconds']:.0f} s)")
        elif name == "levers":
            for lever in value.values():
                if "error" in lever:
                    lines.append(f"- {lever['question']}: failed: {lever['error']}")
                    continue
                figures = "; ".join(f"{k}: " + ", ".join(f"{m} {v:.3g}" for m, v in fig.items() if isinstance(v, (int, float)))
                                    for k, fig in lever.get("variants", {}).items())
                peak = lever.get("peak_gpu_memory_gib")
                lines.append(f"- {lever['question']}: {figures}" + (f"; peak GPU memory {peak:.2f} GiB" if peak is not None else ""))
        elif name == "fidelity":
            for model in value["models"]:
                for variant, figures in model["variants"].items():
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, (int, float)))
                    lines.append(f"- fidelity, {variant} against float32: {shown}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_suite.json / .md (the device tool's $OUT)")
    parser.add_argument("--model", default=None, help="model spec (default: build the mT5-base-shaped random checkpoint)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on cuda")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--parts", nargs="+", default=None, help="run only these parts (default: all)")
    parser.add_argument("--quick", action="store_true", help="seconds-long windows (a smoke run, not figures)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from bench.checkpoint import build_checkpoint

        args.model = str(build_checkpoint(log=log))
    results: dict[str, Any] = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine_description(),
                               "device": args.device, "cuda": torch.version.cuda, "model": args.model, "dtype": args.dtype, "clients": args.clients, "quick": args.quick, "parts": {}}
    for name, run in parts(args, args.model).items():
        if args.parts and name not in args.parts:
            continue
        log(f"{name} ...")
        started = time.monotonic()
        try:
            results["parts"][name] = {"result": run()}
        except Exception:  # noqa: BLE001 - one failed part must not lose the others' figures
            results["parts"][name] = {"error": traceback.format_exc()}
        results["parts"][name]["seconds"] = round(time.monotonic() - started, 1)
        log(f"{name} done in {results['parts'][name]['seconds']:.0f} s" + (" (failed)" if "error" in results["parts"][name] else ""))
        (args.out / "gpu_suite.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
        (args.out / "gpu_suite.md").write_text(summary(results))
    print(summary(results))
    return results


if __name__ == "__main__":
    main()
