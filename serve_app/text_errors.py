"""Refusals of the text layer (empty text, label counts, duplicate labels): 422s naming the field and the rule."""

from __future__ import annotations

from serve_app.engine.errors import EngineInputError


class EmptyTextError(EngineInputError):
    def __init__(self, field: str = "text") -> None:
        super().__init__(field, "must contain at least one non-whitespace character")


class LabelCountError(EngineInputError):
    def __init__(self, count: int, minimum: int, maximum: int, field: str = "labels") -> None:
        super().__init__(field, f"needs between {minimum} and {maximum} labels, got {count}")


class UnknownTaskError(EngineInputError):
    def __init__(self, task: str, known: list[str]) -> None:
        super().__init__("task", f"unknown task {task!r}; known tasks: {', '.join(sorted(known))}")


class MissingSlotError(EngineInputError):
    def __init__(self, slot: str, task: str | None) -> None:
        owner = f"task {task!r}" if task else "this task"
        super().__init__(slot, f"is required by {owner} and must be a non-empty string")


class DuplicateLabelError(EngineInputError):
    def __init__(self, label: str, field: str = "labels") -> None:
        super().__init__(field, f"labels must be distinct; {label!r} appears more than once")
