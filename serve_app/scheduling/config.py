"""The scheduler's live budgets: ModelReplica's `user_config` in config.yaml (changed without a restart)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Decoder rows (one per returned sequence) decoded together at each step.
    max_batch_rows: int = Field(64, ge=1, le=4096)
    # Prompt tokens encoded per iteration (scoring and newly admitted generation together), so a
    # burst of new work delays the running rows' next token by a bounded prefill. At least one
    # request is admitted per iteration whatever its length.
    max_prefill_tokens: int = Field(2048, ge=1, le=1_000_000)
    # Background work (dataset jobs, `mt5-bulk --url`) holds at most this share of the decoder rows, so an
    # interactive request finds rows free; it takes them all only when it is alone (a request larger than the
    # share still runs, once no other background row does).
    background_share: float = Field(0.75, gt=0.0, le=1.0)

    def within_rows(self, limit: int) -> SchedulerConfig:
        """These budgets with at most `limit` rows (what the device's memory holds: engine/memory.py)."""
        return self if self.max_batch_rows <= limit else self.model_copy(update={"max_batch_rows": max(1, limit)})
