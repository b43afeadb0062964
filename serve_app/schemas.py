"""HTTP request and response models: the public contract (design.md), its defaults and limits."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from serve_app.classification import MAX_LABEL_CHARS, MAX_LABELS, MIN_LABELS, clean_labels
from serve_app.engine.errors import EngineInputError
from serve_app.engine.requests import MAX_NEW_TOKENS, MAX_RETURN_SEQUENCES, MAX_TEMPERATURE, MAX_TOP_K, SamplingParams

MAX_TEXT_CHARS = 20_000  # far past the 512-token window; longer text is truncated anyway
MAX_BATCH_TEXTS = 50

Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS, description="Input text (UTF-8)")]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain at least one non-whitespace character")
    return value


def _none_blank(texts: list[str]) -> list[str]:
    for index, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"texts[{index}] must contain at least one non-whitespace character")
    return texts


class _Strict(BaseModel):
    # Unknown fields are refused so a typo (e.g. "temprature") is reported, not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class SamplingKnobs(_Strict):
    """The sampling fields every generating route shares; `max_length` on the wire is new tokens inside."""

    max_length: int = Field(128, ge=1, le=MAX_NEW_TOKENS, description="Most new tokens per output")
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, description="0 = greedy")
    top_k: int = Field(50, ge=0, le=MAX_TOP_K, description="Sample from the k most likely tokens; 0 = off")
    top_p: float = Field(0.95, gt=0.0, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Same seed, same outputs")

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            num_return_sequences=self._sequences(),
            max_new_tokens=self.max_length,
            temperature=float(self.temperature),
            top_k=self.top_k,
            top_p=float(self.top_p),
            seed=self.seed,
        )

    def _sequences(self) -> int:
        return 1


class SamplingFields(SamplingKnobs):
    num_return_sequences: int = Field(1, ge=1, le=MAX_RETURN_SEQUENCES, description="How many paraphrases to return")

    def _sequences(self) -> int:
        return self.num_return_sequences

    @staticmethod
    def wire_fields(params: SamplingParams) -> dict[str, int | float]:
        """sampling_params() reversed: a client's JSON for `params` (seed left to the caller)."""
        return {
            "num_return_sequences": params.num_return_sequences,
            "max_length": params.max_new_tokens,
            "temperature": params.temperature,
            "top_k": params.top_k,
            "top_p": params.top_p,
        }


class AugmentRequest(SamplingFields):
    text: Text

    _check_text = field_validator("text")(_not_blank)


Seed = Annotated[int, Field(ge=0, lt=2**63)]


class AugmentBatchRequest(SamplingFields):
    texts: list[Text] = Field(min_length=1, max_length=MAX_BATCH_TEXTS)
    seeds: list[Seed] | None = Field(
        None,
        min_length=1,
        max_length=MAX_BATCH_TEXTS,
        description="One seed per text, instead of `seed`: text i gets what /augment gives it with seed seeds[i]",
    )

    _check_texts = field_validator("texts")(_none_blank)

    @field_validator("seeds")
    @classmethod
    def _one_seed_per_text(cls, seeds: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if seeds is None:
            return seeds
        if info.data.get("seed") is not None:
            raise ValueError("give either 'seed' (one for all texts) or 'seeds' (one per text), not both")
        texts = info.data.get("texts")
        if texts is not None and len(seeds) != len(texts):
            raise ValueError(f"must hold one seed per text: {len(texts)} texts, {len(seeds)} seeds")
        return seeds

    def sampling_params_per_text(self) -> SamplingParams | list[SamplingParams]:
        """One SamplingParams for every text, or one per text when `seeds` is given."""
        shared = self.sampling_params()
        if self.seeds is None:
            return shared
        return [dataclasses.replace(shared, seed=seed) for seed in self.seeds]


class AugmentResponse(BaseModel):
    augmented_texts: list[str]
    truncated: bool = False


class AugmentBatchResponse(BaseModel):
    augmented_texts: list[list[str]]
    truncated: list[bool]


Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]


class _LabelsMixin(_Strict):
    labels: list[Label] = Field(min_length=MIN_LABELS, max_length=MAX_LABELS, description="Candidate labels, distinct")
    mode: Literal["score", "generate"] = Field("score", description="score: probability per label; generate: free generation")
    scoring: Literal["vocabulary", "label_tokens"] | None = Field(
        None,
        description="score mode: vocabulary = the model's own likelihood of each label (normalised over the full vocabulary); "
        "label_tokens = normalised over the labels' tokens only (faster, a different quantity); null = the service's default",
    )

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        """The label rules have one home (classification.clean_labels: distinct once sanitised)."""
        try:
            clean_labels(labels)
        except EngineInputError as error:
            raise ValueError(error.rule if error.field == "labels" else str(error)) from None
        return labels


class ClassifyRequest(_LabelsMixin):
    text: Text

    _check_text = field_validator("text")(_not_blank)


class ClassifyBatchRequest(_LabelsMixin):
    texts: list[Text] = Field(min_length=1, max_length=MAX_BATCH_TEXTS)

    _check_texts = field_validator("texts")(_none_blank)


class ClassifyScoreResponse(BaseModel):
    sequence: str
    label: str
    labels: list[str]
    scores: list[float]
    truncated: bool


class ClassifyGenerateResponse(BaseModel):
    sequence: str
    label: str | None
    generated: str
    truncated: bool


class ClassifyBatchResponse(BaseModel):
    results: list[ClassifyScoreResponse | ClassifyGenerateResponse]


class GenerateRequest(SamplingKnobs):
    """A model-card task with its fields, or a raw prompt. Greedy by default (temperature 0)."""

    task: str | None = Field(None, description="A task from GET /tasks, e.g. summary, title, sentiment")
    prompt: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, description="A raw prompt instead of a task")
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    passage: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    answer: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    fields: dict[str, Annotated[str, Field(max_length=MAX_TEXT_CHARS)]] = Field(
        default_factory=dict, max_length=16, description="Slots of a custom task template"
    )
    temperature: float = Field(0.0, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, description="0 = greedy (the default here)")

    @model_validator(mode="after")
    def _task_or_prompt(self) -> GenerateRequest:
        if (self.task is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'task' or 'prompt'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt must contain at least one non-whitespace character")
        return self

    def slot_values(self) -> dict[str, str]:
        values = {name: value for name, value in (("text", self.text), ("passage", self.passage), ("answer", self.answer)) if value is not None}
        return {**self.fields, **values}


class GenerateResponse(BaseModel):
    text: str
    task: str | None
    truncated: bool


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: str
    demo: bool
    device: str
    dtype: str = Field(description="float32, bfloat16, float16 or int8: what the model runs in")
    dtype_reason: str = Field(description="why: auto's choice for this hardware (AMX or not, CUDA) or the configured value")


class HealthUnavailableResponse(BaseModel):
    status: Literal["unavailable"]
    detail: str = Field(description="why: no ModelReplica is running (starting, crashed, being rescheduled)")


class TaskInfo(BaseModel):
    name: str
    fields: list[str]
    template: str


class TasksResponse(BaseModel):
    tasks: list[TaskInfo]


class FieldError(BaseModel):
    field: str
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[FieldError] | str
