"""HTTP request and response models: the public contract (docs/http-api.md), its defaults and limits."""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any, Literal

from fastapi import Header
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from serve_app.engine.requests import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    MAX_NEW_TOKENS,
    MAX_RETURN_SEQUENCES,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    SamplingParams,
)
from serve_app.jobs.state import JobView
from serve_app.text.classification import (
    MAX_LABEL_CHARS,
    MAX_LABELS,
    MIN_LABELS,
    clean_labels,
)
from serve_app.text.errors import TextInputError
from serve_app.text.label_keeping import (
    MAX_CANDIDATES,
    OVERSAMPLING,
    Checks,
    KeepLabel,
    check_rules,
    wanted_label,
)
from serve_app.text.prompts import PromptTemplates, sanitize_label

MAX_TEXT_CHARS = 20_000  # far past the 512-token window; longer text is truncated anyway
MAX_BATCH_TEXTS = 50
SEED_LIMIT = 2**63  # seeds are below this (SamplingParams)

# The rules below that JSON Schema can express are in the models' schemas too, so that /openapi.json says
# exactly what is accepted: a regex for "holds a character that is not whitespace" (Python's str.isspace,
# as str.strip applies it) and for "holds a character the label sanitiser keeps", and the cross-field rules
# as anyOf branches over their few cases.


def _character_class(excluded: list[int]) -> str:
    """A regex class matching one character that is not among `excluded` (code points, ascending)."""

    def escape(point: int) -> str:
        if point > 0xFFFF:
            return chr(point)  # literal: JSON carries it as a surrogate pair, a regex reads one character
        char = chr(point)
        return char if char.isalnum() and char.isascii() else f"\\u{point:04x}"

    ranges: list[list[int]] = []
    for point in excluded:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "[^" + "".join(escape(a) if a == b else f"{escape(a)}-{escape(b)}" for a, b in ranges) + "]"


NON_BLANK = _character_class([point for point in range(0x3001) if chr(point).isspace()])  # none is above U+3000


@functools.cache
def visible_label_character() -> str:
    """A label must hold one character that sanitize_label keeps (not a control, format, unassigned or space
    character)."""
    return _character_class([point for point in range(0x110000) if not sanitize_label(chr(point))])


def _label_pattern(schema: dict[str, Any]) -> None:
    schema["pattern"] = visible_label_character()  # computed when a schema is asked for, not at import (about a second)


def _whole(value: object) -> object:
    """JSON Schema counts 1.0 as an integer, and so does this service (1.5 is still refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole)]
# Integer types with their bounds inside the type, not on the field, so that the JSON schema states them also
# where the field may be null or is a list's item.
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT), BeforeValidator(_whole)]
CandidateBudget = Annotated[int, Field(ge=1, le=MAX_CANDIDATES), BeforeValidator(_whole)]

Text = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="Input text (UTF-8), with a non-whitespace character",
        json_schema_extra={"pattern": NON_BLANK},
    ),
]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain at least one non-whitespace character")
    return value


def _none_blank(texts: list[str]) -> list[str]:
    for index, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"texts[{index}] must contain at least one non-whitespace character")
    return texts


class StrictBody(BaseModel):
    # Unknown fields are refused so a typo (e.g. "temprature") is reported, not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class SamplingKnobs(StrictBody):
    """The sampling fields every generating route shares; `max_length` on the wire is new tokens inside."""

    max_length: Whole = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS, description="Most new tokens per output")
    temperature: float = Field(
        DEFAULT_TEMPERATURE, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, description="0 = greedy"
    )
    top_k: Whole = Field(DEFAULT_TOP_K, ge=0, le=MAX_TOP_K, description="Sample from the k most likely tokens; 0 = off")
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass")
    seed: Seed | None = Field(None, description="Same seed, same outputs")

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
    num_return_sequences: Whole = Field(1, ge=1, le=MAX_RETURN_SEQUENCES, description="How many paraphrases to return")

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


Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS, json_schema_extra=_label_pattern)]
LABELS_RULE = (
    "distinct as sent, each with a visible character, and answered as sent. Labels that read the same in the prompt "
    "once "
    "sanitised (the ASCII and full-width commas, the full stop and colons are neutralised, whitespace is collapsed, "
    "NFKC "
    'applies: ":" and "-", say) are scored on the same tokens and get the same probability'
)


def distinct_labels(labels: list[str]) -> list[str]:
    """The label rules have one home (classification.clean_labels)."""
    try:
        clean_labels(labels)
    except TextInputError as error:
        raise ValueError(error.rule if error.field == "labels" else str(error)) from None
    return labels


class KeepLabelFields(StrictBody):
    labels: list[Label] = Field(
        min_length=MIN_LABELS,
        max_length=MAX_LABELS,
        json_schema_extra={"uniqueItems": True},
        description=f"Candidate labels, as /classify takes them: {LABELS_RULE}",
    )
    label: Label | None = Field(
        None,
        description=(
            "The label the paraphrases must keep; one not among `labels` joins them as a candidate; "
            "null = the text's own top label under `labels`"
        ),
    )

    _check_labels = field_validator("labels")(distinct_labels)

    @field_validator("label")
    @classmethod
    def _label_rules(cls, label: str | None, info: ValidationInfo) -> str | None:
        """The rule has one home (label_keeping.wanted_label); the labels' own errors are reported on them."""
        labels = info.data.get("labels")
        if label is not None and labels is not None:
            try:
                wanted_label(KeepLabel(list(labels), label))
            except TextInputError as error:
                if error.field == "keep_label.label":
                    raise ValueError(error.rule) from None
        return label


def _budget_rule(schema: dict[str, Any]) -> None:
    """max_candidates is at least num_return_sequences (its default 1 when absent), or null."""
    cases = [{"properties": {"max_candidates": {"type": "null"}}}, {"not": {"required": ["num_return_sequences"]}}]
    cases += [
        {"properties": {"num_return_sequences": {"const": n}, "max_candidates": {"minimum": n}}}
        for n in range(1, MAX_RETURN_SEQUENCES + 1)
    ]
    schema.setdefault("allOf", []).append({"anyOf": cases})


class AugmentChecks(SamplingFields):
    """What /augment and /augment_batch may ask of the paraphrases beyond sampling them (label_keeping.py)."""

    model_config = ConfigDict(json_schema_extra=lambda schema, model: _budget_rule(schema))

    keep_label: KeepLabelFields | None = Field(
        None, description="Return only paraphrases whose top label under `labels` (the /classify scoring) is `label`"
    )
    max_candidates: CandidateBudget | None = Field(
        None,
        description=(
            "Most candidates sampled per text to find num_return_sequences that pass the checks, at least "
            "num_return_sequences; "
            f"null = {OVERSAMPLING} x num_return_sequences with a check, else num_return_sequences"
        ),
    )
    min_distance: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description=(
            "Drop paraphrases closer than this to the input or to a kept one (character-bigram Jaccard "
            "distance; 0 = off)"
        ),
    )

    @field_validator("max_candidates")
    @classmethod
    def _room_for_the_asked(cls, value: int | None, info: ValidationInfo) -> int | None:
        """The budget's rule has one home (label_keeping.check_rules)."""
        asked = info.data.get("num_return_sequences")
        if value is not None and asked is not None:
            try:
                check_rules(Checks(max_candidates=value), asked)
            except TextInputError as error:
                raise ValueError(error.rule) from None
        return value

    def checks(self) -> Checks:
        keep = None if self.keep_label is None else KeepLabel(list(self.keep_label.labels), self.keep_label.label)
        return Checks(keep_label=keep, max_candidates=self.max_candidates, min_distance=float(self.min_distance))

    @staticmethod
    def check_fields(checks: Checks) -> dict[str, Any]:
        """checks() reversed: a client's JSON for `checks` (only what it asks)."""
        out: dict[str, Any] = {}
        if checks.keep_label is not None:
            out["keep_label"] = {"labels": list(checks.keep_label.labels), "label": checks.keep_label.label}
        if checks.max_candidates is not None:
            out["max_candidates"] = checks.max_candidates
        if checks.min_distance:
            out["min_distance"] = checks.min_distance
        return out


class AugmentRequest(AugmentChecks):
    text: Text

    _check_text = field_validator("text")(_not_blank)


def _seeds_rules(schema: dict[str, Any]) -> None:
    """`seed` or `seeds`, not both; and `seeds` as long as `texts`."""
    _budget_rule(schema)
    schema["allOf"].append(
        {"anyOf": [{"properties": {"seed": {"type": "null"}}}, {"properties": {"seeds": {"type": "null"}}}]}
    )
    lengths = [
        {"properties": {"texts": {"minItems": k, "maxItems": k}, "seeds": {"minItems": k, "maxItems": k}}}
        for k in range(1, MAX_BATCH_TEXTS + 1)
    ]
    schema["allOf"].append({"anyOf": [{"properties": {"seeds": {"type": "null"}}}, *lengths]})


class AugmentBatchRequest(AugmentChecks):
    model_config = ConfigDict(json_schema_extra=lambda schema, model: _seeds_rules(schema))

    texts: list[Text] = Field(min_length=1, max_length=MAX_BATCH_TEXTS)
    seeds: list[Seed] | None = Field(
        None,
        min_length=1,
        max_length=MAX_BATCH_TEXTS,
        description=(
            "One seed per text (as many as `texts`), instead of `seed`: text i gets what /augment gives it "
            "with seed seeds[i]"
        ),
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


class CandidateCounts(BaseModel):
    """How a text's paraphrases were found (present when the request asked for checks)."""

    asked: int = Field(description="num_return_sequences")
    tried: int = Field(description="candidates sampled")
    kept: int = Field(description="candidates returned: fewer than asked when the budget ran out")
    max_candidates: int = Field(description="the budget")
    repeated: int = Field(description="empty, equal to the input or to another candidate")
    too_close: int = Field(description="within min_distance of the input or of a kept paraphrase")
    other_label: int = Field(description="with keep_label: another label came out on top")


class AugmentResponse(BaseModel):
    augmented_texts: list[str]
    truncated: bool = False
    label: str | None = Field(None, description="keep_label: the label every returned paraphrase has on top")
    label_scores: list[float] | None = Field(None, description="keep_label: each paraphrase's probability for `label`")
    candidates: CandidateCounts | None = None


class AugmentBatchResponse(BaseModel):
    augmented_texts: list[list[str]]
    truncated: list[bool]
    label: list[str | None] | None = None
    label_scores: list[list[float]] | None = None
    candidates: list[CandidateCounts] | None = None


class LabelsFields(StrictBody):
    labels: list[Label] = Field(
        min_length=MIN_LABELS,
        max_length=MAX_LABELS,
        json_schema_extra={"uniqueItems": True},
        description=f"Candidate labels: {LABELS_RULE}",
    )
    mode: Literal["score", "generate"] = Field(
        "score", description="score: probability per label; generate: free generation"
    )
    scoring: Literal["vocabulary", "label_tokens"] | None = Field(
        None,
        description=(
            "score mode: vocabulary = the model's own likelihood of each label (normalised over the full "
            "vocabulary); label_tokens = normalised over the labels' tokens only (faster, a different quantity); "
            "null = the service's default"
        ),
    )

    _check_labels = field_validator("labels")(distinct_labels)


class ClassifyRequest(LabelsFields):
    text: Text

    _check_text = field_validator("text")(_not_blank)


class ClassifyBatchRequest(LabelsFields):
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


STANDARD_SLOTS = ("text", "passage", "answer")  # slots with a field of their own; any other slot is given in `fields`


def _slot_given(slot: str) -> dict[str, Any]:
    """A task's slot has a non-blank value: its own field, or (that field absent or null) its entry in `fields`."""
    in_fields = {
        "required": ["fields"],
        "properties": {"fields": {"required": [slot], "properties": {slot: {"pattern": NON_BLANK}}}},
    }
    if slot not in STANDARD_SLOTS:
        return in_fields
    own = {"required": [slot], "properties": {slot: {"type": "string", "pattern": NON_BLANK}}}
    return {"anyOf": [own, {"allOf": [{"properties": {slot: {"type": "null"}}}, in_fields]}]}


def generate_forms(templates: PromptTemplates) -> list[dict[str, Any]]:
    """/generate's forms, exactly one of which a body takes: a raw prompt, or one task with every slot of its
    template."""
    prompt = {
        "required": ["prompt"],
        "properties": {"prompt": {"type": "string", "pattern": NON_BLANK}, "task": {"type": "null"}},
    }
    tasks = [
        {
            "required": ["task"],
            "properties": {"task": {"const": name}, "prompt": {"type": "null"}},
            "allOf": [_slot_given(slot) for slot in template.fields],
        }
        for name, template in templates.tasks.items()
    ]
    return [prompt, *tasks]


class GenerateRequest(SamplingKnobs):
    """A model-card task with its fields, or a raw prompt. Greedy by default (temperature 0)."""

    # The model card's tasks; the Ingress states its own configured tasks in /openapi.json (ingress/openapi.py).
    model_config = ConfigDict(
        json_schema_extra=lambda schema, model: schema.update(oneOf=generate_forms(PromptTemplates()))
    )

    task: str | None = Field(
        None, description="A task from GET /tasks, e.g. summary, title, sentiment; give exactly one of task or prompt"
    )
    prompt: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="A raw prompt instead of a task, with a non-whitespace character",
    )
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    passage: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    answer: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    fields: dict[str, Annotated[str, Field(max_length=MAX_TEXT_CHARS)]] = Field(
        default_factory=dict, max_length=16, description="Slots of a custom task template"
    )
    temperature: float = Field(
        0.0, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, description="0 = greedy (the default here)"
    )

    @model_validator(mode="after")
    def _task_or_prompt(self) -> GenerateRequest:
        if (self.task is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'task' or 'prompt'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt must contain at least one non-whitespace character")
        return self

    def slot_values(self) -> dict[str, str]:
        values = {
            name: value
            for name, value in (("text", self.text), ("passage", self.passage), ("answer", self.answer))
            if value is not None
        }
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
    dtype_reason: str = Field(
        description=(
            "why: auto's choice for this hardware (on a CPU the measured bfloat16 over float32 speed; on CUDA "
            "the compute capability) or the configured value"
        )
    )


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
    request_id: str = Field(description="The request's id (its X-Request-ID): the one every log line about it names")


class RateLimitedResponse(ErrorResponse):
    limit: Literal["requests_per_minute", "generated_tokens_per_day"] = Field(description="The key's limit reached")
    allowed: int = Field(description="What the limit allows (requests a minute, or generated tokens a UTC day)")


def batch_of_augment_answers(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """/augment_batch's columns from one /augment answer per text (checks' fields only where asked)."""
    out: dict[str, Any] = {
        "augmented_texts": [a["augmented_texts"] for a in answers],
        "truncated": [a["truncated"] for a in answers],
    }
    for key in ("label", "label_scores", "candidates"):
        if answers and key in answers[0]:
            out[key] = [a[key] for a in answers]
    return out


PriorityHeader = Annotated[
    Literal["interactive", "background"],
    Header(
        alias="X-MT5-Priority",
        description=(
            "background: scheduled after every interactive request, as dataset jobs are (mt5-bulk --url sends it); "
            "the answers are the same"
        ),
    ),
]


class JobList(BaseModel):
    jobs: list[JobView] = Field(description="The caller's jobs, newest first")
