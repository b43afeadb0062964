"""Which number format the model runs in, chosen per machine by what the hardware does, and why.

`auto` on a CPU times the model's own feed-forward matmul shapes in float32 and in bfloat16
at load and runs bfloat16 only when it is clearly faster (`BF16_MARGIN`): CPUs with AMX or
AVX512-BF16 run bf16 natively, others emulate it and are slower. A flag list would miss
either side (torch's AMX probe says nothing about AVX512-BF16 or ARM's BF16). On CUDA, bf16
where the GPU runs it natively (compute capability 8.0 and up), float32 elsewhere; float32
matmuls never use TF32, so float32 stays the exact reference. float16 is refused: mT5's
activations overflow it. `int8` (opt-in, CPU) runs the linear layers in int8, weights per channel and
activations per row (int8_linear.py); its error is measured by `python -m bench fidelity`.
Whatever the weights, logits, log-softmax, label scores and sampling run in float32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from serve_app.engine.errors import ModelSpecError

logger = logging.getLogger(__name__)

FLOAT_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
REFUSED_DTYPES = ("float16", "fp16")
CHOICES = ("auto", "int8", *FLOAT_DTYPES)

# bf16 must beat float32 by this much on the probe: below it the rest of the step (norms,
# softmax, casts) eats the gain, and a near-tie is not worth bf16's rounding.
BF16_MARGIN = 1.25
# Tokens per probe matmul: a decoding batch's rows or a short prefill.
PROBE_ROWS = 64
PROBE_REPEATS = 7
# The GPU generation from which bf16 is native (Ampere: A10G, A100; Hopper).
BF16_CUDA_CAPABILITY = (8, 0)

Timer = Callable[[], float]


@dataclass(frozen=True)
class MatmulShape:
    """The feed-forward shapes of the model being loaded: what most of its time is spent in."""

    d_model: int
    d_ff: int


@dataclass(frozen=True)
class Precision:
    """The weights' dtype (float32 under int8's quantised linears), whether linears are int8, and why."""

    dtype: torch.dtype
    int8: bool
    reason: str

    @property
    def name(self) -> str:
        return "int8" if self.int8 else str(self.dtype).removeprefix("torch.")


def bf16_speedup(
    shape: MatmulShape, timer: Timer = time.perf_counter, rows: int = PROBE_ROWS, repeats: int = PROBE_REPEATS
) -> float:
    """float32 time / bfloat16 time of one feed-forward block (in and out projection) at `shape`, best of `repeats`."""

    def best_time(dtype: torch.dtype) -> float:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(rows, shape.d_model, generator=generator).to(dtype)
        w_in = torch.randn(shape.d_ff, shape.d_model, generator=generator).to(dtype)
        w_out = torch.randn(shape.d_model, shape.d_ff, generator=generator).to(dtype)

        def block() -> torch.Tensor:
            return nn.functional.linear(nn.functional.linear(x, w_in), w_out)

        block()  # first call: kernel selection, allocation
        best = float("inf")
        for _ in range(repeats):
            start = timer()
            block()
            best = min(best, timer() - start)
        return best

    with torch.inference_mode():
        fp32, bf16 = best_time(torch.float32), best_time(torch.bfloat16)
    return fp32 / max(bf16, 1e-12)


@lru_cache(maxsize=8)
def _measured_bf16_speedup(shape: MatmulShape, threads: int) -> float:
    # Cached per shape and thread count: a process loading the model twice measures once.
    return bf16_speedup(shape)


def cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def choose_precision(
    requested: str | None,
    device: torch.device,
    shape: MatmulShape,
    speedup: Callable[[MatmulShape], float] | None = None,
    capability: Callable[[torch.device], tuple[int, int]] = cuda_capability,
) -> Precision:
    """Resolve config.yaml's `dtype` (or MT5_DTYPE) for `device` and the model's `shape`.

    `speedup` (bf16 over float32 on this CPU) and `capability` are seams for tests; by default
    they measure this machine.
    """
    if requested in REFUSED_DTYPES:
        raise ModelSpecError(
            f"dtype {requested!r} is refused: mT5's activations overflow float16 (inf, then NaN answers). "
            "Use bfloat16 (native on CUDA compute capability 8.0+ and CPUs with AMX or AVX512-BF16) or float32."
        )
    if requested in ("auto", "", None):
        if device.type == "cuda":
            return _auto_cuda(device, capability)
        ratio = (speedup or (lambda s: _measured_bf16_speedup(s, torch.get_num_threads())))(shape)
        measured = (
            f"bfloat16 matmuls measured {ratio:.2f}x float32's on this CPU (d_model {shape.d_model}, d_ff "
            f"{shape.d_ff}, {torch.get_num_threads()} threads; bfloat16 from {BF16_MARGIN}x)"
        )
        if ratio >= BF16_MARGIN:
            return Precision(torch.bfloat16, False, f"auto: bfloat16, {measured}")
        return Precision(torch.float32, False, f"auto: float32, {measured}")
    if requested == "int8":
        if device.type != "cpu":
            raise ModelSpecError(f"dtype 'int8' runs on the CPU only; device is {device}. Use bfloat16 on a GPU.")
        return Precision(torch.float32, True, "int8: linear layers in int8, per channel and row (requested)")
    if requested not in FLOAT_DTYPES:
        raise ModelSpecError(f"dtype {requested!r} is not one of {', '.join(CHOICES)}")
    dtype = FLOAT_DTYPES[requested]
    if dtype == torch.bfloat16 and device.type == "cuda" and capability(device) < BF16_CUDA_CAPABILITY:
        logger.warning(
            "bfloat16 requested on %s (compute capability %s): emulated there, slower than float32",
            device,
            capability(device),
        )
    return Precision(dtype, False, f"{str(dtype).removeprefix('torch.')} (requested)")


def _auto_cuda(device: torch.device, capability: Callable[[torch.device], tuple[int, int]]) -> Precision:
    major, minor = capability(device)
    if (major, minor) >= BF16_CUDA_CAPABILITY:
        return Precision(
            torch.bfloat16, False, f"auto: bfloat16, native on this GPU (compute capability {major}.{minor})"
        )
    return Precision(
        torch.float32,
        False,
        f"auto: float32, this GPU (compute capability {major}.{minor}) has no native bfloat16; float32 matmuls without "
        "TF32",
    )


def configure_float32_matmuls(device: torch.device) -> None:
    """float32 stays exact on CUDA (TF32 off): it is the reference every other format is measured against."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
