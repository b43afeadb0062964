"""Load an mT5-family checkpoint (ModelScope or safetensors layout) and its tokenizer.

transformers 5 derives two things from config fields that are wrong for this
model family (docs/model.md, "transformers 5"): it ties lm_head to the embeddings, and for
model_type "t5" it may scale decoder outputs by d_model^-0.5. The weights are
therefore loaded by hand into MT5ForConditionalGeneration, which never scales,
and a separate lm_head in the checkpoint stays separate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import MT5Config, MT5ForConditionalGeneration, PreTrainedTokenizerBase

from serve_app.engine.attention import register as register_invariant_attention
from serve_app.engine.errors import ModelSpecError
from serve_app.engine.fused_layers import fuse_layers
from serve_app.engine.int8_linear import quantise_linears
from serve_app.engine.output_head import HeadChoice, choose_head_layout, install_output_head, is_tied
from serve_app.engine.packed_linear import PackChoice, choose_packing, pack_linears
from serve_app.engine.precision import (
    MatmulShape,
    Precision,
    choose_precision,
    configure_float32_matmuls,
)
from serve_app.engine.spec import ResolvedSpec, resolve_spec
from serve_app.engine.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

# Fields of a saved config.json that are not architecture.
_IGNORED_CONFIG_KEYS = {
    "model_type",
    "architectures",
    "transformers_version",
    "tie_word_embeddings",
    "torch_dtype",
    "dtype",
    "_name_or_path",
}


@dataclass
class LoadedModel:
    model: MT5ForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    resolved: ResolvedSpec
    device: torch.device
    precision: Precision
    head: HeadChoice = HeadChoice("linear", "not measured")
    packing: PackChoice = PackChoice(False, "not measured")

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype

    @property
    def is_demo(self) -> bool:
        return self.resolved.is_demo

    def describe(self) -> dict[str, Any]:
        """What /healthz reports about the model."""
        return {
            "model": self.resolved.spec,
            "demo": self.is_demo,
            "device": str(self.device),
            "dtype": self.precision.name,
            "dtype_reason": self.precision.reason,
        }


def choose_device(
    device: str | None = "auto",
    gpu_reserved: bool = False,
    cuda_available: Callable[[], bool] = torch.cuda.is_available,
) -> torch.device:
    """`auto` is cuda when present, else cpu. A cuda request, or `auto` in a process a GPU was
    reserved for, without working CUDA stops here: a GPU node silently serving at CPU speed is
    worse than none. An explicit `cpu` is obeyed even beside a reserved GPU."""
    automatic = device in ("auto", "", None)
    wants_cuda = (automatic and gpu_reserved) or (
        not automatic and device is not None and torch.device(device).type == "cuda"
    )
    if wants_cuda and not cuda_available():
        asked = "a GPU reserved for this replica (device auto)" if automatic else f"device {device!r}"
        raise ModelSpecError(
            f"{asked} but CUDA is not usable here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none: a CPU-only build'}). "
            "Install the CUDA build of torch that matches the node's driver (the image pins one), "
            "or set device: cpu (and replica_gpus: 0) to serve from the CPU on purpose."
        )
    if automatic or device is None:
        return torch.device("cuda" if cuda_available() else "cpu")
    return torch.device(device)


def load_config(path: Path) -> MT5Config:
    raw = json.loads((path / "config.json").read_text())
    model_type = raw.get("model_type", "mt5")
    if model_type not in ("t5", "mt5"):
        raise ModelSpecError(
            f"{path}/config.json has model_type {model_type!r}; this service serves the mT5 family (t5 or mt5)"
        )
    return MT5Config(**{key: value for key, value in raw.items() if key not in _IGNORED_CONFIG_KEYS})


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from model.safetensors, pytorch_model.bin, or their sharded index files."""
    from safetensors.torch import load_file

    for index_name, loader in (("model.safetensors.index.json", "st"), ("pytorch_model.bin.index.json", "bin")):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(str(path / shard)) if loader == "st" else _torch_load(path / shard))
            return state
    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").is_file():
        return _torch_load(path / "pytorch_model.bin")
    raise ModelSpecError(
        f"{path} holds no weights: expected model.safetensors or pytorch_model.bin (or a sharded index)"
    )


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    return state


def build_model(config: MT5Config, state: dict[str, torch.Tensor]) -> MT5ForConditionalGeneration:
    """Materialise the model straight from the checkpoint tensors (no random init, no tying guesses)."""
    with torch.device("meta"):
        model = MT5ForConditionalGeneration(config)
    separate_head = "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state["shared.weight"])
    model.load_state_dict(state, strict=False, assign=True)
    model.set_input_embeddings(model.shared)  # type: ignore[no-untyped-call]  # encoder/decoder share `shared`
    if separate_head:
        model.config.tie_word_embeddings = False
    else:
        model.lm_head.weight = model.shared.weight
    missing = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if missing:
        raise ModelSpecError(
            f"checkpoint is missing tensors: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}"
        )
    return model


def load_model(
    spec: str, device: str = "auto", dtype: str = "auto", gpu_reserved: bool = False, relay_head: bool = True
) -> LoadedModel:
    """Resolve `spec`, load weights and tokenizer, move to device and precision (precision.py), eval mode.

    `relay_head`: store lm_head in the matmul layout this CPU runs fastest (output_head.py) and pack the other
    linear layers for oneDNN where that measures faster (packed_linear.py); False keeps transformers' nn.Linear
    layers, for tools that read the model as transformers built it."""
    resolved = resolve_spec(spec)
    torch_device = choose_device(device, gpu_reserved)
    config = load_config(resolved.path)
    precision = choose_precision(dtype, torch_device, MatmulShape(config.d_model, config.d_ff))
    packing = PackChoice(False, "plain")
    configure_float32_matmuls(torch_device)
    model = build_model(config, read_state_dict(resolved.path))
    nn.Module.to(model, device=torch_device, dtype=precision.dtype)  # in place (transformers' .to wrapper is untyped)
    model.train(False)
    model.requires_grad_(False)
    if torch_device.type == "cpu":
        # Batch invariance: a padded row's attention must round as the row alone does (attention.py).
        model.set_attn_implementation(register_invariant_attention())
    if precision.int8:
        fuse_layers(model)
        quantise_linears(model)  # in place, lm_head included
        head = HeadChoice("linear", "int8: per output channel, activations per row (int8_linear.py)")
    elif relay_head:
        head = choose_head_layout(model.lm_head.weight, tied=is_tied(model))
        install_output_head(model, head.layout)
        fuse_layers(model)
        packing = choose_packing(feed_forward_weight(model))
        if packing.packed:
            pack_linears(model)
    else:
        head = HeadChoice("linear", "kept as transformers built it")
    tokenizer = load_tokenizer(resolved.path)
    logger.info(
        "loaded %s from %s on %s as %s (%s); lm_head %s; linear layers %s",
        spec,
        resolved.path,
        torch_device,
        precision.name,
        precision.reason,
        head.reason,
        packing.reason,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        resolved=resolved,
        device=torch_device,
        precision=precision,
        head=head,
        packing=packing,
    )


def feed_forward_weight(model: MT5ForConditionalGeneration) -> torch.Tensor:
    """A feed-forward layer's weight (d_ff x d_model), the shape most of the model's linear work has."""
    d_ff = model.config.d_ff
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features in (d_ff, 2 * d_ff):  # 2 x: fused (fused_layers.py)
            return module.weight
    raise ModelSpecError("the model has no feed-forward layer of d_ff outputs")
