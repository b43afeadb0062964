"""The model card's prompt formats, rendered safely.

Templates are plain strings with ``{field}`` slots, every one overridable from
config.yaml. Rendering is one pass of slot substitution (never str.format), so
braces or slot names inside user text stay literal text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from serve_app.text.errors import MissingSlotError, UnknownTaskError

CLASSIFICATION_TEMPLATE = "文本分类。\n候选标签：{labels}。\n文本内容：{text}"
# The card shows no paraphrase prompt; this one is unverified and configurable.
AUGMENT_TEMPLATE = "生成与下列文字相同意思的句子：\n{text}"
LABEL_SEPARATOR = ","

# Tasks behind /generate, as the model card shows them (docs/model.md).
DEFAULT_TASK_TEMPLATES: dict[str, str] = {
    "sentiment": "情感分析：{text}",
    "keywords": "抽取关键词：\n{text}",
    "title": "为以下的文本生成标题：\n{text}",
    "summary": "为下面的文章生成摘要：\n{text}",
    "opinion_target": "评价对象抽取：{text}",
    "translation": "翻译成英文：{text}",
    "question_generation": "根据给定的段落和答案生成对应的问题。\n段落：{passage}\n答案：{answer}",
}

_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Template:
    """A prompt template and the slot whose text may be truncated to fit the input window."""

    text: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_SLOT.findall(self.text)))

    @property
    def truncatable_field(self) -> str:
        """The free text that gives way when the prompt is too long: `text`, else `passage`, else the last slot."""
        fields = self.fields
        for name in ("text", "passage"):
            if name in fields:
                return name
        return fields[-1]

    def slot_values(self, values: Mapping[str, object], task: str | None = None) -> dict[str, str]:
        """Every slot's value, stripped; MissingSlotError (422 on the slot) where one is absent or blank."""
        filled: dict[str, str] = {}
        for name in self.fields:
            value = values.get(name)
            if not isinstance(value, str) or not value.strip():
                raise MissingSlotError(name, task)
            filled[name] = value.strip()
        return filled

    def render(self, values: Mapping[str, str]) -> str:
        return _SLOT.sub(lambda match: values.get(match.group(1), match.group(0)), self.text)


RAW_PROMPT = Template("{prompt}")  # /generate with a raw prompt instead of a task


@dataclass(frozen=True)
class PromptTemplates:
    """Every prompt the service renders: classification, augmentation and the /generate tasks by name."""

    classification: Template = Template(CLASSIFICATION_TEMPLATE)
    augment: Template = Template(AUGMENT_TEMPLATE)
    tasks: Mapping[str, Template] = field(
        default_factory=lambda: {name: Template(text) for name, text in DEFAULT_TASK_TEMPLATES.items()}
    )

    def task(self, name: str) -> Template:
        """The template of a /generate task; UnknownTaskError (422 on `task`) naming the known ones."""
        template = self.tasks.get(name)
        if template is None:
            raise UnknownTaskError(name, list(self.tasks))
        return template

    def task_list(self) -> list[dict[str, object]]:
        """GET /tasks: every /generate task, its fields and template."""
        return [
            {"name": name, "fields": list(template.fields), "template": template.text}
            for name, template in self.tasks.items()
        ]

    def task_values(self, name: str, values: Mapping[str, object]) -> dict[str, str]:
        """A /generate task's slot values, after its rules: the task exists, every slot is a non-empty string."""
        return self.task(name).slot_values(values, name)


def sanitize_label(label: str) -> str:
    """A label as it may appear inside the candidate list without changing the prompt's structure.

    The tokenizer applies NFKC, which maps the full-width comma to the list separator ``,``,
    so both commas become the enumeration comma ``、``; the full stop that closes the list
    becomes ``.``; colons, which open the prompt's sections, become ``-``; newlines and
    other control characters become spaces.
    """
    cleaned = []
    for char in unicodedata.normalize("NFKC", label):
        if char in ",，":
            cleaned.append("、")
        elif char == "。":
            cleaned.append(".")
        elif char == ":":  # NFKC already mapped "：" here; a colon could forge a "文本内容：" section
            cleaned.append("-")
        elif unicodedata.category(char)[0] == "C" or char.isspace():
            cleaned.append(" ")
        else:
            cleaned.append(char)
    return " ".join("".join(cleaned).split())


def classification_values(text: str, prompt_labels: list[str]) -> dict[str, str]:
    return {"text": text, "labels": LABEL_SEPARATOR.join(prompt_labels)}
