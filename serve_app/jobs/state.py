"""A job's state as the store keeps it and the API shows it."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobView(BaseModel):
    """A job as GET /jobs/{id} shows it."""

    id: str
    task: Literal["augment", "classify", "evaluate"]
    params: dict[str, Any]
    filename: str
    status: Status = "queued"
    total: int = Field(description="input records, good and bad")
    done: int = Field(0, description="input records finished (written or in the errors)")
    errors: int = Field(0, description="records that went to the errors file")
    records_per_s: float | None = Field(None, description="this run's speed, records per second")
    eta_s: float | None = Field(None, description="seconds left at this run's speed")
    created_at: str = Field(default_factory=now_iso)
    started_at: str | None = None
    finished_at: str | None = None
    resumed: int = Field(0, description="times the job was resumed after a stop (replica lost, service restarted)")
    detail: str | None = Field(None, description="why a job failed or was cancelled")
    report: dict[str, Any] | None = Field(None, description="evaluate: the metrics (jobs/evaluation.py)")


class JobState(JobView):
    """A job as the store keeps it: its view, whose it is, and when it was made (GET /jobs lists newest first)."""

    owner: str  # the caller's key digest, or "anonymous" without keys (ingress/auth.py)
    created_unix: float = Field(default_factory=time.time)

    def view(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"owner", "created_unix"})

    @property
    def finished(self) -> bool:
        return self.status in FINISHED
