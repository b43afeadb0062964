"""An evaluate job's report: how well zero-shot classification does on a team's own labelled sample.

Each record leaves one entry (runner.py): its gold label, the predicted label, the gold label's rank
among the scores, the label predicted when the text was classified again inside a different batch,
the text's length in characters, and per alternative wording the label predicted with it. From them:

- accuracy, macro-F1, per-label precision / recall / F1 / support, the confusion matrix (rows gold,
  columns predicted);
- accuracy on short texts (at most SHORT_TEXT_CHARS characters);
- repeatability: the share of texts whose answer is identical when classified again in another batch;
- misplaced: the share of texts answered with a label that is not even the gold label's runner-up
  (the gold label ranked third or lower: the model put the text somewhere unrelated, not in a close
  neighbour); 0 by construction with two labels;
- per label with alternative wordings: each wording's F1 for that label, and the best one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SHORT_TEXT_CHARS = 5


def entry(gold: str, label: str, labels: list[str], scores: list[float], text: str) -> dict[str, Any]:
    """One record's evaluation entry, from its /classify answer (`labels` and `scores` in the request's order)."""
    gold_score = scores[labels.index(gold)]
    return {
        "gold": gold,
        "label": label,
        "gold_rank": 1 + sum(score > gold_score for score in scores),
        "chars": len(text.strip()),
    }


def worded_labels(labels: Sequence[str], label: str, alternative: str) -> list[str]:
    """The candidate labels with `alternative` in `label`'s place (its position kept)."""
    return [alternative if other == label else other for other in labels]


def as_label(predicted: str, label: str, alternative: str) -> str:
    """An answer under the worded labels, read back in the original labels' terms."""
    return label if predicted == alternative else predicted


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def per_label_scores(labels: Sequence[str], gold: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        true_positive = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        predicted_as = sum(p == label for p in predicted)
        support = sum(g == label for g in gold)
        precision, recall = _ratio(true_positive, predicted_as), _ratio(true_positive, support)
        out[label] = {"precision": precision, "recall": recall, "f1": _f1(precision, recall), "support": support}
    return out


def report(
    labels: Sequence[str], entries: Sequence[dict[str, Any]], wordings: Sequence[tuple[str, Sequence[str]]] = ()
) -> dict[str, Any]:
    """The evaluation report over every record's entry (see the module's docstring)."""
    gold = [item["gold"] for item in entries]
    predicted = [item["label"] for item in entries]
    total = len(entries)
    per_label = per_label_scores(labels, gold, predicted)
    index = {label: position for position, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g]][index[p]] += 1
    short = [item for item in entries if item["chars"] <= SHORT_TEXT_CHARS]
    repeated = [item for item in entries if item.get("repeat") is not None]
    misplaced = sum(item["label"] != item["gold"] and item["gold_rank"] > 2 for item in entries)
    result: dict[str, Any] = {
        "records": total,
        "labels": list(labels),
        "accuracy": _ratio(sum(g == p for g, p in zip(gold, predicted, strict=True)), total),
        "macro_f1": _ratio(sum(scores["f1"] for scores in per_label.values()), len(labels)),
        "per_label": per_label,
        "confusion": {"labels": list(labels), "matrix": matrix},
        "short_texts": {
            "max_chars": SHORT_TEXT_CHARS,
            "records": len(short),
            "accuracy": _ratio(sum(item["label"] == item["gold"] for item in short), len(short)) if short else None,
        },
        "repeatability": _ratio(sum(item["repeat"] == item["label"] for item in repeated), len(repeated))
        if repeated
        else None,
        "misplaced": _ratio(misplaced, total),
        "wordings": {},
    }
    for label, alternatives in wordings:
        tried = {label: per_label[label]["f1"]}
        for alternative in alternatives:
            answers = [item["wordings"][label][alternative] for item in entries]
            tried[alternative] = per_label_scores([label], gold, answers)[label]["f1"]
        best = max(tried, key=lambda wording: tried[wording])  # the label's own wording wins ties (first)
        result["wordings"][label] = {"f1": tried, "best": best}
    return result
