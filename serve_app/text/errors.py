"""Refusals of the text layer: a field of the client's input breaks a rule (answered 422 naming the field and the
rule)."""

from __future__ import annotations

from typing import Any


class TextInputError(ValueError):
    """Bad text input. `field` names the offending field (dotted path inside a body), `rule` the rule it broke."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def __reduce__(
        self,
    ) -> tuple[Any, ...]:  # pickled across Ray processes: rebuild from (field, rule), whatever the subclass
        return (TextInputError, (self.field, self.rule))


class EmptyTextError(TextInputError):
    def __init__(self, field: str = "text") -> None:
        super().__init__(field, "must contain at least one non-whitespace character")


class LabelCountError(TextInputError):
    def __init__(self, count: int, minimum: int, maximum: int, field: str = "labels") -> None:
        super().__init__(field, f"needs between {minimum} and {maximum} labels, got {count}")


class UnknownTaskError(TextInputError):
    def __init__(self, task: str, known: list[str]) -> None:
        super().__init__("task", f"unknown task {task!r}; known tasks: {', '.join(sorted(known))}")


class MissingSlotError(TextInputError):
    def __init__(self, slot: str, task: str | None) -> None:
        owner = f"task {task!r}" if task else "this task"
        super().__init__(slot, f"is required by {owner} and must be a non-empty string")


class DuplicateLabelError(TextInputError):
    def __init__(self, label: str, field: str = "labels") -> None:
        super().__init__(field, f"labels must be distinct; {label!r} appears more than once")
