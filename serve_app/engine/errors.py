"""Exceptions the engine raises; the HTTP layer maps them to 4xx answers."""

from __future__ import annotations

from typing import Any


class ModelSpecError(RuntimeError):
    """A model spec that cannot be resolved: names the spec, where it looked and the fix."""


class EngineInputError(ValueError):
    """Bad input for the engine. `field` names the offending field, `rule` the rule it broke."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def __reduce__(
        self,
    ) -> tuple[Any, ...]:  # pickled across Ray processes: rebuild from (field, rule), whatever the subclass
        return (EngineInputError, (self.field, self.rule))


class ParameterRangeError(EngineInputError):
    """A sampling parameter outside its documented range."""


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure on the device (CUDA) or the host (torch's CPU allocator), or an error it caused: an
    allocation that fails inside a CUDA graph capture surfaces as the capture's own failure when the capture ends,
    with the out-of-memory error as its context."""
    import torch

    seen: BaseException | None = error
    for _ in range(8):  # a chain, not a cycle
        if seen is None:
            return False
        if (
            isinstance(seen, torch.OutOfMemoryError)
            or "can't allocate memory" in str(seen)
            or "out of memory" in str(seen).lower()
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
