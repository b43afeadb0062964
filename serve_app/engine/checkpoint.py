"""Random-weight mT5 models and the checkpoint layouts the loader reads.

Used by the demo model, the tests (tiny checkpoints in every layout) and the
benchmarks (an mT5-base-shaped checkpoint: random weights cost the same compute).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import MT5Config, MT5ForConditionalGeneration

# google/mt5-base, as the real checkpoint is shaped (docs/model.md).
MT5_BASE_SHAPE: dict[str, Any] = {
    "vocab_size": 250112,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
}

Layout = Literal["modelscope", "safetensors"]


def random_mt5(config_kwargs: dict[str, Any], seed: int = 0) -> MT5ForConditionalGeneration:
    """An mT5 model with seeded random weights and an lm_head separate from the embeddings.

    transformers 5 forces MT5Config.tie_word_embeddings=True, so the model is built
    tied and then untied by hand, as the real checkpoint's lm_head is its own tensor.
    """
    config = MT5Config(**config_kwargs)
    torch.manual_seed(seed)
    model = MT5ForConditionalGeneration(config)
    # Small normal init keeps a random network's logits in a range where sampling is not degenerate.
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.05)
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if module.__class__.__name__.endswith("LayerNorm") and isinstance(weight, torch.Tensor):
                weight.fill_(1.0)
    model.lm_head.weight = nn.Parameter(torch.randn_like(model.shared.weight) * 0.05)
    model.config.tie_word_embeddings = False
    model.train(False)
    return model


def save_checkpoint(
    model: MT5ForConditionalGeneration,
    out_dir: str | Path,
    layout: Layout = "modelscope",
    model_type: Literal["t5", "mt5"] = "mt5",
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Save `model` the way a published checkpoint is laid out.

    modelscope: pytorch_model.bin + config.json (+ configuration.json), model_type t5 or mt5,
    config.json written as the hub's mT5 configs are: no tie_word_embeddings field.
    safetensors: model.safetensors + config.json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    # The hub's checkpoints store each tied embedding once; keep only the canonical names.
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        state.pop(alias, None)
    config = model.config.to_dict()
    for key in (
        "tie_word_embeddings",
        "transformers_version",
        "architectures",
        "_name_or_path",
        "dtype",
        "torch_dtype",
    ):
        config.pop(key, None)
    config["model_type"] = model_type
    config["architectures"] = ["T5ForConditionalGeneration" if model_type == "t5" else "MT5ForConditionalGeneration"]
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    if layout == "modelscope":
        torch.save(state, out / "pytorch_model.bin")
        (out / "configuration.json").write_text(
            json.dumps({"framework": "pytorch", "task": "text2text-generation"}, indent=2)
        )
    else:
        from safetensors.torch import save_file

        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        for item in Path(tokenizer_dir).iterdir():
            if item.is_file() and (
                item.name.startswith("tokenizer") or item.suffix == ".model" or item.name == "special_tokens_map.json"
            ):
                (out / item.name).write_bytes(item.read_bytes())
    return out
