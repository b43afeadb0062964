"""What a job asks, per task: the matching route's body without its texts, plus where the fields are in the file.

The fields, bounds and defaults are the HTTP schemas' own (ingress/schemas.py), so a job accepts exactly
what /classify_batch or /augment_batch accepts; `job_spec` turns the checked params into the TaskSpec
the bulk code runs (bulk/task.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from serve_app.bulk.task import TaskSpec
from serve_app.ingress.schemas import (
    LABELS_RULE,
    MAX_LABELS,
    MIN_LABELS,
    AugmentChecks,
    Label,
    LabelsFields,
    StrictBody,
    distinct_labels,
)
from serve_app.text.classification import Scoring

JobTask = Literal["augment", "classify", "evaluate"]
FieldName = Annotated[str, Field(min_length=1, max_length=200)]
MAX_WORDINGS = 5  # alternatives per label: each is a whole extra classification of the sample


class DatasetFields(StrictBody):
    text_field: FieldName = Field("text", description="Field (JSONL) or column (CSV) holding the text")
    id_field: FieldName = Field("id", description="Field carried into the results (default: the input line number)")


class ClassifyJobParams(LabelsFields, DatasetFields):
    """/classify_batch's fields without `texts`."""


class AugmentJobParams(AugmentChecks, DatasetFields):
    """/augment_batch's fields without `texts` and `seeds`: with `seed`, each record gets its own seed from it and
    its line (the same paraphrases however the job is split or resumed, as `mt5-bulk`)."""


class EvaluateJobParams(DatasetFields):
    """Zero-shot classification of a labelled sample, scored against its gold labels (jobs/evaluation.py)."""

    label_field: FieldName = Field("label", description="Field (JSONL) or column (CSV) holding the gold label")
    labels: list[Label] | None = Field(
        None,
        min_length=MIN_LABELS,
        max_length=MAX_LABELS,
        description=f"Candidate labels ({LABELS_RULE}); null = the gold labels found in the file, in first-seen order",
    )
    scoring: Literal["vocabulary", "label_tokens"] | None = Field(
        None, description="as /classify's; null = the service's default"
    )
    wordings: dict[Label, list[Label]] | None = Field(
        None,
        description=(
            f"Other wordings to try for a label (at most {MAX_WORDINGS} each): each scored in the label's place on the "
            "same sample; the report names the best wording per label"
        ),
    )

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str] | None) -> list[str] | None:
        return None if labels is None else distinct_labels(labels)

    @field_validator("wordings")
    @classmethod
    def _few(cls, wordings: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for label, alternatives in (wordings or {}).items():
            if not 1 <= len(alternatives) <= MAX_WORDINGS:
                raise ValueError(f"{label!r}: give 1 to {MAX_WORDINGS} alternatives")
        return wordings


PARAMS_MODELS: dict[str, type[DatasetFields]] = {
    "augment": AugmentJobParams,
    "classify": ClassifyJobParams,
    "evaluate": EvaluateJobParams,
}


def parse_params(task: str, raw: str | bytes) -> DatasetFields:
    """`params` as the form sent it (a JSON object) for `task`; raises ValidationError (422, field named)."""
    model = PARAMS_MODELS[task]
    return model.model_validate_json(raw or b"{}")


def job_spec(params: DatasetFields, default_scoring: Scoring, gold_labels: list[str] | None = None) -> TaskSpec:
    """The TaskSpec a job runs; `gold_labels` (evaluate): the file's labels, the candidates unless params name them."""
    if isinstance(params, ClassifyJobParams):
        scoring = params.scoring or default_scoring
        return TaskSpec("classify", labels=tuple(params.labels), mode=params.mode, scoring=scoring)
    if isinstance(params, AugmentJobParams):
        return TaskSpec("augment", sampling=params.sampling_params(), checks=params.checks())
    assert isinstance(params, EvaluateJobParams)
    labels = tuple(params.labels or gold_labels or ())
    wordings = tuple((label, tuple(alternatives)) for label, alternatives in (params.wordings or {}).items())
    return TaskSpec("evaluate", labels=labels, scoring=params.scoring or default_scoring, wordings=wordings)


def params_errors(error: ValidationError) -> list[dict[str, Any]]:
    """A ValidationError of `params` as the service's field errors, each field under `params.`."""
    out = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item.get("loc", ()))
        out.append({"field": f"params.{loc}" if loc else "params", "msg": str(item.get("msg")), "type": item["type"]})
    return out
