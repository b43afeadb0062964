"""Prompt text to token ids with the 512-token window enforced by truncating free text only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from serve_app.text.errors import TextInputError
from serve_app.text.prompts import Template


@dataclass(frozen=True)
class EncodedPrompt:
    input_ids: list[int]
    truncated: bool


class PromptEncoder:
    """Renders templates and tokenizes them; decodes generated ids back to text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_input_tokens: int = 512) -> None:
        self.tokenizer = tokenizer
        self.max_input_tokens = max_input_tokens
        self.eos_id = tokenizer.eos_token_id

    def encode(self, template: Template, values: Mapping[str, str]) -> EncodedPrompt:
        """Token ids of the rendered prompt (ending in </s>); only the truncatable field is ever cut."""
        ids = self._ids(template.render(values))
        if len(ids) <= self.max_input_tokens:
            return EncodedPrompt(ids, truncated=False)
        field = template.truncatable_field
        fixed = len(self._ids(template.render({**values, field: ""})))
        budget = self.max_input_tokens - fixed
        if budget < 1:
            other = [name for name in template.fields if name != field] or [field]
            raise TextInputError(
                other[0], f"leaves no room for {field!r} within the {self.max_input_tokens}-token input window"
            )
        text = values[field]
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        # Tokenizing the pieces apart can differ at the seams, so shrink until the whole prompt fits.
        while budget > 0:
            cut = offsets[min(budget, len(offsets)) - 1][1]
            ids = self._ids(template.render({**values, field: text[:cut]}))
            if len(ids) <= self.max_input_tokens:
                return EncodedPrompt(ids, truncated=True)
            budget -= max(1, len(ids) - self.max_input_tokens)
        raise TextInputError(field, f"cannot be fitted into the {self.max_input_tokens}-token input window")

    def label_ids(self, label: str) -> list[int]:
        """A label's tokens as the model would generate them, without the closing </s>."""
        ids = self._ids(label)
        return ids[:-1] if ids and ids[-1] == self.eos_id else ids

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence in, one string out
        return text.strip()

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, truncation=False)["input_ids"]
        return ids
