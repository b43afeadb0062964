"""Which number format the model runs in, chosen per machine, and why.

`auto` picks bfloat16 where the hardware runs it natively (CUDA; CPUs with AMX,
whose tile unit multiplies bf16 several times faster than fp32) and float32
elsewhere (where bf16 matmuls are emulated they are slower than fp32).
`int8` (opt-in, CPU) quantises the linear layers dynamically (VNNI/AMX int8
kernels); its error is measured by `python -m bench fidelity`. Whatever the weights, logits,
log-softmax, label scores and sampling run in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from serve_app.engine.errors import ModelSpecError

logger = logging.getLogger(__name__)

FLOAT_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
CHOICES = ("auto", "int8", *FLOAT_DTYPES)


def cpu_has_amx() -> bool:
    """torch's own check for the AMX tile unit (False where this torch build cannot tell)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None) or getattr(torch.cpu, "is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # noqa: BLE001 - a capability probe must never stop start-up
        return False


@dataclass(frozen=True)
class Precision:
    """The weights' dtype (float32 under int8's quantised linears), whether linears are int8, and why."""

    dtype: torch.dtype
    int8: bool
    reason: str

    @property
    def name(self) -> str:
        return "int8" if self.int8 else str(self.dtype).removeprefix("torch.")


def choose_precision(requested: str | None, device: torch.device, amx: Callable[[], bool] = cpu_has_amx) -> Precision:
    """Resolve config.yaml's `dtype` (or MT5_DTYPE) for `device`."""
    if requested in ("auto", "", None):
        if device.type == "cuda":
            return Precision(torch.bfloat16, False, "auto: bfloat16 on a CUDA device")
        if amx():
            return Precision(torch.bfloat16, False, "auto: bfloat16, this CPU has AMX (torch.cpu._is_amx_tile_supported)")
        return Precision(torch.float32, False, "auto: float32, this CPU has no AMX (bfloat16 would be emulated, slower)")
    if requested == "int8":
        if device.type != "cpu":
            raise ModelSpecError(f"dtype 'int8' (dynamic quantisation) runs on the CPU only; device is {device}. Use bfloat16 on a GPU.")
        return Precision(torch.float32, True, "int8: linear layers dynamically quantised (requested)")
    if requested not in FLOAT_DTYPES:
        raise ModelSpecError(f"dtype {requested!r} is not one of {', '.join(CHOICES)}")
    dtype = FLOAT_DTYPES[requested]
    return Precision(dtype, False, f"{str(dtype).removeprefix('torch.')} (requested)")


def quantize_linears(model: nn.Module) -> nn.Module:
    """int8 dynamic quantisation of every nn.Linear, in place (weights int8, activations quantised per call)."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; the API still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
