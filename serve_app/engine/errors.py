"""Exceptions the engine raises; the HTTP layer maps them to 4xx answers."""

from __future__ import annotations


class ModelSpecError(RuntimeError):
    """A model spec that cannot be resolved: names the spec, where it looked and the fix."""


class EngineInputError(ValueError):
    """Bad input for the engine. `field` names the offending field, `rule` the rule it broke."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def __reduce__(self):  # pickled across Ray processes: rebuild from (field, rule), whatever the subclass
        return (EngineInputError, (self.field, self.rule))


class EmptyTextError(EngineInputError):
    def __init__(self, field: str = "text") -> None:
        super().__init__(field, "must contain at least one non-whitespace character")


class LabelCountError(EngineInputError):
    def __init__(self, count: int, minimum: int, maximum: int, field: str = "labels") -> None:
        super().__init__(field, f"needs between {minimum} and {maximum} labels, got {count}")


class DuplicateLabelError(EngineInputError):
    def __init__(self, label: str, field: str = "labels") -> None:
        super().__init__(field, f"labels must be distinct; {label!r} appears more than once")


class ParameterRangeError(EngineInputError):
    """A sampling parameter outside its documented range."""
