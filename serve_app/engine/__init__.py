"""The torch/transformers layer. Imports no Ray: runs in a Serve replica, a bulk job or a bare GPU box."""

from serve_app.engine.errors import EngineInputError, ModelSpecError
from serve_app.engine.loading import LoadedModel, load_model, load_tokenizer
from serve_app.engine.model import Seq2SeqEngine
from serve_app.engine.requests import GenerationRequest, SamplingParams, ScoringRequest

__all__ = [
    "EngineInputError",
    "GenerationRequest",
    "LoadedModel",
    "ModelSpecError",
    "SamplingParams",
    "ScoringRequest",
    "Seq2SeqEngine",
    "load_model",
    "load_tokenizer",
]
