"""This machine's own bounds, measured in the run that judges against them: matmul peak per number format,
the bandwidth of reading weights, and the FLOPs and weight bytes a workload needs.

A workload's figure divided by its bound says how close the engine is to what the hardware allows:
- classification is compute-bound: its matmul FLOPs (counted by torch's FlopCounterMode on one run)
  over its seconds, against the format's matmul peak;
- a decoding step at 32 rows reads every decoder and lm_head weight once: the time to read those bytes
  at the measured bandwidth is its floor, and its matmul FLOPs at the peak another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Square matmuls large enough to reach the kernel's steady state on a small machine, and the model's own
# shapes (rows x d_model x d_ff); the peak is the best of all, alternated over rounds.
PEAK_SHAPES = ((2048, 2048, 2048), (1024, 768, 2048), (512, 768, 8192))
# A weight the size of mT5-base's lm_head (250,112 x 768), read by one row: the bandwidth weights are read at.
BANDWIDTH_SHAPE = (250_112, 768)


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # first call: kernel choice, allocation, packing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _int8_linear(weight: torch.Tensor) -> nn.Module:
    """An int8 linear layer, as `dtype: int8` runs every linear layer."""
    from serve_app.engine.int8_linear import Int8Linear

    return Int8Linear(weight)


def matmul_peak(name: str, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of the best matmul this machine runs in format `name` (float32, bfloat16, or int8 as the Int8Linear the
    service runs), over PEAK_SHAPES. Floats: the faster of torch's linear and oneDNN's kernel on a weight packed once
    (packed_linear.py), which the service uses where it measures faster: on an AMD CPU torch's float32 linear
    (MKL) ran at half the packed kernel's speed, and a bound below what the service reaches is no bound."""
    from serve_app.engine.packed_linear import pack_weight, packed_matmul, packing_available

    generator = torch.Generator().manual_seed(0)
    best: dict[str, float] = {}
    with torch.inference_mode():
        for rows, inner, cols in PEAK_SHAPES:
            a = torch.randn(rows, inner, generator=generator)
            w = torch.randn(cols, inner, generator=generator) / inner**0.5
            if name == "int8":
                linear = _int8_linear(w)
                seconds = _best_seconds(lambda a=a, linear=linear: linear(a), repeats)
            else:
                dtype = getattr(torch, name)
                a, w = a.to(dtype), w.to(dtype)
                seconds = _best_seconds(lambda a=a, w=w: torch.nn.functional.linear(a, w), repeats)
                if packing_available(w):
                    packed = pack_weight(w, rows)
                    seconds = min(seconds, _best_seconds(lambda a=a, packed=packed: packed_matmul(a, packed), repeats))
            best[f"{rows}x{inner}x{cols}"] = 2 * rows * inner * cols / seconds / 1e9
    shape = max(best, key=best.__getitem__)
    return {"gflops": best[shape], "shape": shape, "by_shape": best}


def read_bandwidth(repeats: int = 5) -> dict[str, Any]:
    """GB/s at which this machine reads memory far larger than its caches: a sum over a tensor of lm_head's size
    in float32 (768 MB), the fastest read torch does. A weight read once per step can go no faster."""
    generator = torch.Generator().manual_seed(0)
    tensor = torch.randn(*BANDWIDTH_SHAPE, generator=generator)
    with torch.inference_mode():
        seconds = _best_seconds(tensor.sum, repeats)
    size = tensor.numel() * tensor.element_size()
    return {"gb_per_s": size / seconds / 1e9, "bytes": size}


def count_flops(run: Callable[[], object]) -> int:
    """Matmul and attention FLOPs of one call of `run` (torch's FlopCounterMode: mm, addmm, bmm, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        run()
    return int(counter.get_total_flops())


def weight_bytes(modules: list[nn.Module]) -> int:
    """Bytes of the parameters and buffers (an int8 layer's weight is a buffer) of `modules`: what one step reads."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total
