"""How tests compare two answers for the same input computed in different batches."""

from __future__ import annotations

from typing import Any


def shipped_dtype() -> str:
    """What config.yaml's `dtype: auto` runs for the demo model on this machine (measured as the replica measures)."""
    import torch

    from serve_app.engine.demo import DEMO_SHAPE
    from serve_app.engine.precision import MatmulShape, choose_precision

    return choose_precision("auto", torch.device("cpu"), MatmulShape(DEMO_SHAPE["d_model"], DEMO_SHAPE["d_ff"])).name


# The same input scored inside different batches: float32 rounding stays far below 1e-5; bfloat16's
# 8-bit mantissa makes padding and batch shape show at about 1e-4 in a probability (README, "Precision").
SCORE_TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-3}


def assert_same_classification(a: dict[str, Any], b: dict[str, Any], dtype: str | None = None) -> None:
    """Two /classify answers for one input computed in different batches: the same up to rounding.

    The top label is the same unless the two best labels are within rounding of each other."""
    tolerance = SCORE_TOLERANCE[dtype or shipped_dtype()]
    assert set(a["labels"]) == set(b["labels"])
    scores_a, scores_b = (
        dict(zip(a["labels"], a["scores"], strict=True)),
        dict(zip(b["labels"], b["scores"], strict=True)),
    )
    for label, score in scores_a.items():
        assert abs(score - scores_b[label]) <= tolerance, (label, score, scores_b[label])
    if len(a["scores"]) < 2 or a["scores"][0] - a["scores"][1] > 2 * tolerance:
        assert a["label"] == b["label"] and a["labels"] == b["labels"]
