"""The baseline's model and handlers: transformers `generate` per request, float32, as this model is usually served.

- classify: free generation as the model card does (greedy `generate` on the card's prompt,
  then match the text against the candidates). Generation is capped at the longest
  label's token count + 1 (the label and </s>): what a trained model spends when it
  answers with a label. A random-weight model never emits </s>, so an uncapped
  baseline would be charged for tokens the real model would not produce.
- augment: `generate(do_sample=True, top_k, top_p, temperature, num_return_sequences=n,
  max_new_tokens=max_length)` on the augment prompt.

Weights load through serve_app.engine.loading.load_model (the same checkpoint, the same
tensors as the Serve app), then the stock `model.generate` does the work. No web framework here:
bench/lib/baseline_server.py serves it over HTTP; `python -m bench gpu` calls it directly.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, Field

from serve_app.engine.loading import load_model
from serve_app.text.prompts import PromptTemplates, classification_values

PROMPTS = PromptTemplates()  # the model card's prompts, as the service renders them by default


class ClassifyBody(BaseModel):
    text: str = Field(min_length=1)
    labels: list[str] = Field(min_length=2)


class AugmentBody(BaseModel):
    text: str = Field(min_length=1)
    num_return_sequences: int = Field(1, ge=1, le=10)
    max_length: int = Field(128, ge=1, le=512)
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)


class Baseline:
    """The model and the two handlers."""

    def __init__(
        self, spec: str, device: str = "cpu", dtype: str = "float32", max_input_tokens: int = 512, loaded=None
    ) -> None:
        self.loaded = loaded or load_model(spec, device, dtype, relay_head=False)  # transformers as a user has it
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        self.device = self.loaded.device
        self.max_input_tokens = max_input_tokens

    def _inputs(self, prompt: str) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(prompt, return_tensors="pt", truncation=True, max_length=self.max_input_tokens)
        return {key: value.to(self.device) for key, value in encoded.items()}

    @torch.no_grad()
    def classify(self, body: ClassifyBody) -> dict[str, Any]:
        labels = [label.strip() for label in body.labels]
        prompt = PROMPTS.classification.render(classification_values(body.text.strip(), labels))
        longest = max(len(self.tokenizer(label, add_special_tokens=False).input_ids) for label in labels)
        output = self.model.generate(**self._inputs(prompt), do_sample=False, num_beams=1, max_new_tokens=longest + 1)
        generated = self.tokenizer.decode(output[0], skip_special_tokens=True).strip()
        return {"label": generated if generated in labels else None, "generated": generated}

    @torch.no_grad()
    def augment(self, body: AugmentBody) -> dict[str, Any]:
        prompt = PROMPTS.augment.render({"text": body.text.strip()})
        output = self.model.generate(
            **self._inputs(prompt),
            do_sample=True,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            num_return_sequences=body.num_return_sequences,
            max_new_tokens=body.max_length,
        )
        texts = [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in output]
        return {"augmented_texts": texts}
