"""The torch/transformers layer. Imports no Ray: runs in a Serve replica, a bulk job or a bare GPU box.

Names load on first use (PEP 562), so the torch-free parts (requests, errors,
spec resolution) can be imported without paying for torch: the preflight check
and the text layer use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the type checker sees; at run time __getattr__ below loads each on first use
    from serve_app.engine.errors import EngineInputError as EngineInputError
    from serve_app.engine.errors import ModelSpecError as ModelSpecError
    from serve_app.engine.loading import LoadedModel as LoadedModel
    from serve_app.engine.loading import load_model as load_model
    from serve_app.engine.model import Seq2SeqEngine as Seq2SeqEngine
    from serve_app.engine.requests import GenerationRequest as GenerationRequest
    from serve_app.engine.requests import SamplingParams as SamplingParams
    from serve_app.engine.requests import ScoringRequest as ScoringRequest
    from serve_app.engine.tokenizer import load_tokenizer as load_tokenizer

_HOMES = {
    "EngineInputError": "serve_app.engine.errors",
    "ModelSpecError": "serve_app.engine.errors",
    "LoadedModel": "serve_app.engine.loading",
    "load_model": "serve_app.engine.loading",
    "load_tokenizer": "serve_app.engine.tokenizer",
    "Seq2SeqEngine": "serve_app.engine.model",
    "GenerationRequest": "serve_app.engine.requests",
    "SamplingParams": "serve_app.engine.requests",
    "ScoringRequest": "serve_app.engine.requests",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
