"""What Classifier and Augmenter share: settings, the tokenizer, and the ModelReplica handle."""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.engine.loading import load_tokenizer
from serve_app.engine.spec import resolve_spec
from serve_app.engine.tokenization import PromptEncoder
from serve_app.settings import AppSettings


class TextDeployment:
    """CPU-side text work: holds a tokenizer (no weights) and a handle to the model replicas."""

    def __init__(self, settings: dict[str, Any], replica: DeploymentHandle) -> None:
        self.settings = AppSettings.model_validate(settings)
        self.encoder = PromptEncoder(load_tokenizer(resolve_spec(self.settings.model).path), self.settings.max_input_tokens)
        self.replica = replica
