"""The checkpoint's tokenizer, loaded without torch.

The text deployments (Ingress, Classifier, Generator) need only this, and in
transformers 5 `AutoTokenizer` imports torch whenever torch is installed
(hundreds of MiB per light replica and seconds of start-up). The model family
is fixed (t5 / mt5, checked by loading.load_config), so the class AutoTokenizer
would pick is known: T5Tokenizer, the tokenizers-backed one in transformers 5,
which reads tokenizer_config.json and converts spiece.model itself.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase, T5Tokenizer

from serve_app.engine.errors import ModelSpecError


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of the checkpoint at `path` (tokenizer.json, or spiece.model converted)."""
    path = Path(path)
    tokenizer: PreTrainedTokenizerBase
    try:
        tokenizer = T5Tokenizer.from_pretrained(str(path))
    except Exception as exc:
        if (path / "spiece.model").is_file():
            # A bare spiece.model without tokenizer files: mT5's vocabulary has no <extra_id_*> additions.
            tokenizer = T5Tokenizer.from_pretrained(str(path), extra_ids=0)
            return tokenizer
        raise ModelSpecError(f"{path}: no usable tokenizer (expected spiece.model or tokenizer.json): {exc}") from exc
    return tokenizer
