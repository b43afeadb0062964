"""Typed application settings: config.yaml's `args`, then MT5_* environment overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.engine.spec import DEFAULT_MODEL_ID
from serve_app.text.prompts import (
    AUGMENT_TEMPLATE,
    CLASSIFICATION_TEMPLATE,
    DEFAULT_TASK_TEMPLATES,
    PromptTemplates,
    Template,
)

# Environment variables that override the file, applied where the app is built.
ENV_OVERRIDES = {"MT5_MODEL": "model", "MT5_DEVICE": "device", "MT5_DTYPE": "dtype", "MT5_REPLICA_GPUS": "replica_gpus"}
JOBS_STORE_ENV = "MT5_JOBS_STORE"
API_KEYS_FILE_ENV = "MT5_API_KEYS_FILE"
OTLP_ENDPOINT_ENV = "MT5_OTLP_ENDPOINT"


class Templates(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classification: str = CLASSIFICATION_TEMPLATE
    augment: str = AUGMENT_TEMPLATE
    tasks: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TASK_TEMPLATES))

    @field_validator("classification")
    @classmethod
    def _classification_slots(cls, value: str) -> str:
        if set(Template(value).fields) != {"labels", "text"}:
            raise ValueError("the classification template needs exactly the slots {labels} and {text}")
        return value

    @field_validator("augment")
    @classmethod
    def _augment_slots(cls, value: str) -> str:
        if Template(value).fields != ("text",):
            raise ValueError("the augment template needs exactly the slot {text}")
        return value

    @field_validator("tasks")
    @classmethod
    def _task_slots(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            if not Template(template).fields:
                raise ValueError(f"task {name!r} has a template without any {{slot}}")
        return value


class JobsSettings(BaseModel):
    """Dataset jobs (POST /jobs): where they are kept and how big they may be."""

    model_config = ConfigDict(extra="forbid")

    # A directory, or an fsspec URI (s3://bucket/prefix) that every node reaches; MT5_JOBS_STORE overrides it.
    store: str = "~/.local/share/mt5-serve/jobs"
    max_upload_mb: float = Field(50.0, gt=0, le=10_000)
    # body_timeout_s for a dataset upload (POST /jobs): 50 MB in 120 s needs about 0.4 MB/s.
    upload_timeout_s: float = Field(120.0, gt=0, le=3600)
    max_records: int = Field(100_000, ge=1)
    chunk_records: int = Field(16, ge=1, le=50)  # records per model batch of a job (mt5-bulk --url's default)
    chunks_in_flight: int = Field(4, ge=1, le=64)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ClassificationCacheSettings(BaseModel):
    """The Classifier's answer cache: at most `entries` answers and `max_mb` of them per Classifier replica; 0 = off."""

    model_config = ConfigDict(extra="forbid")

    entries: int = Field(10_000, ge=0)
    max_mb: float = Field(64.0, ge=0)

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)


class AppSettings(BaseModel):
    """Everything the deployments need to know besides Serve's own deployment options."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = DEFAULT_MODEL_ID
    device: str = "auto"
    dtype: str = "auto"
    max_input_tokens: int = Field(512, ge=16, le=4096)
    # GPUs per ModelReplica. "auto": 1 where the cluster has GPUs when the app is built, else 0 (laptops).
    # A number is always asked for (a fraction lets replicas share a GPU): use it where GPU nodes autoscale from zero.
    replica_gpus: float | str = "auto"
    # How much lower the light deployments' (Ingress, Classifier, Generator) CPU priority is than the model's:
    # added to their nice value, so on a shared CPU node they run in the model's gaps (0 = same priority).
    light_deployment_nice: int = Field(10, ge=0, le=19)
    # torch intra-op threads per ModelReplica (null: torch's default, one per core).
    torch_threads: int | None = Field(None, ge=1)
    # Independent batches per ModelReplica, sharing its torch threads (serve_app/scheduling/lanes.py).
    # "auto": 2 on a CPU with at least 2 threads, 1 on a GPU.
    scheduler_lanes: int | Literal["auto"] = "auto"
    # The decoding step replayed as CUDA graphs (serve_app/engine/graphed_step.py); CUDA only, refused on a CPU.
    decode_graphs: bool = False
    # /classify score mode: "vocabulary" (the model's own likelihood) or "label_tokens" (faster; README).
    scoring: Literal["vocabulary", "label_tokens"] = "vocabulary"
    # The ingress answers 504 rather than waiting longer than this for a deployment.
    request_timeout_s: float = Field(60.0, gt=0)
    # A request whose body has not all arrived this long after the request reached the Ingress is refused with 408
    # (serve_app/ingress/body_limit.py): a client trickling its body would otherwise hold an Ingress slot.
    body_timeout_s: float = Field(10.0, gt=0, le=600)
    # API-key auth: off unless the variable named here is set or api_key_file names a file.
    api_key_env: str = "MT5_API_KEY"
    api_key_file: str | None = None
    # Named keys with limits (serve_app/access/keys.py), re-read on change; MT5_API_KEYS_FILE overrides it.
    api_keys_file: str | None = None
    # /classify score answers kept for the same text, labels and scoring (serve_app/text/answer_cache.py).
    classification_cache: ClassificationCacheSettings = Field(default_factory=ClassificationCacheSettings)
    # Browser origins allowed to call the API from other sites; empty = CORS off.
    cors_allow_origins: list[str] = Field(default_factory=list)
    # OTLP/HTTP collector for traces (serve_app/tracing.py), e.g. http://collector:4318/v1/traces; None = off.
    otlp_endpoint: str | None = None
    templates: Templates = Field(default_factory=Templates)
    jobs: JobsSettings = Field(default_factory=JobsSettings)

    @field_validator("scheduler_lanes")
    @classmethod
    def _lanes(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("scheduler_lanes is 'auto' or a whole number from 1 to 64")
        return value

    @field_validator("replica_gpus")
    @classmethod
    def _gpus(cls, value: float | str) -> float | str:
        if isinstance(value, str) and value != "auto":
            try:
                value = float(value)  # from the environment, e.g. MT5_REPLICA_GPUS=0.5
            except ValueError:
                raise ValueError("replica_gpus is 'auto' or a number of GPUs such as 0.5") from None
        if not isinstance(value, str) and value < 0:
            raise ValueError("replica_gpus must be >= 0")
        return value

    @classmethod
    def from_args(cls, args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> AppSettings:
        """config.yaml's application args, with MT5_MODEL / MT5_DEVICE / MT5_DTYPE taking precedence."""
        values = dict(args or {})
        environ = os.environ if environ is None else environ
        for variable, key in ENV_OVERRIDES.items():
            if environ.get(variable):
                values[key] = environ[variable]
        if environ.get(OTLP_ENDPOINT_ENV):
            values["otlp_endpoint"] = environ[OTLP_ENDPOINT_ENV]
        if environ.get(API_KEYS_FILE_ENV):
            values["api_keys_file"] = environ[API_KEYS_FILE_ENV]
        if environ.get(JOBS_STORE_ENV):
            values["jobs"] = {**values.get("jobs", {}), "store": environ[JOBS_STORE_ENV]}
        return cls.model_validate(values)

    def prompt_templates(self) -> PromptTemplates:
        """config.yaml's templates, as the text layer renders them."""
        templates = self.templates
        return PromptTemplates(
            Template(templates.classification),
            Template(templates.augment),
            {name: Template(text) for name, text in templates.tasks.items()},
        )
