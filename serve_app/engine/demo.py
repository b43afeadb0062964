"""The built-in demo model: a tiny random-weight mT5 with a real sentencepiece tokenizer.

Trained (tokenizer) and initialised (weights) deterministically from the Chinese
corpus shipped beside this file, so it builds offline in about a second and is
cached. Its outputs are meaningless; everything that reports a model marks it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

DEMO_SPEC = "demo"
CORPUS_PATH = Path(__file__).with_name("demo_corpus.txt")
DEMO_SHAPE = {
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "feed_forward_proj": "gated-gelu",
}
_BUILD_VERSION = "1"


def demo_cache_root() -> Path:
    """Where built demo models live: $MT5_DEMO_CACHE, else ~/.cache/mt5-serve."""
    root = os.environ.get("MT5_DEMO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mt5-serve")
    return Path(root)


def demo_model_dir() -> Path:
    """Build the demo checkpoint once (keyed by corpus and shape) and return its directory."""
    digest = hashlib.sha256(
        CORPUS_PATH.read_bytes() + repr(sorted(DEMO_SHAPE.items())).encode() + _BUILD_VERSION.encode()
    )
    target = demo_cache_root() / f"demo-{digest.hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private temp dir and rename: replicas starting together never see half a model.
    staging = Path(tempfile.mkdtemp(prefix="demo-build-", dir=target.parent))
    try:
        from serve_app.engine.checkpoint import (  # torch: only when building
            random_mt5,
            save_checkpoint,
        )

        tokenizer_dir = staging / "tokenizer"
        vocab_size = _train_tokenizer(tokenizer_dir)
        model = random_mt5({**DEMO_SHAPE, "vocab_size": vocab_size}, seed=1234)
        save_checkpoint(model, staging / "model", layout="safetensors", model_type="mt5", tokenizer_dir=tokenizer_dir)
        try:
            os.rename(staging / "model", target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _train_tokenizer(out_dir: Path) -> int:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    out_dir.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        input=str(CORPUS_PATH),
        model_prefix=str(out_dir / "spiece"),
        vocab_size=1500,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        split_digits=True,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    # Save in the fast format too, so loading never has to convert spiece.model again.
    tokenizer = T5Tokenizer.from_pretrained(str(out_dir), extra_ids=0)
    tokenizer.save_pretrained(str(out_dir))
    return len(tokenizer)
