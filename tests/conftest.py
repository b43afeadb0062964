from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ServeRun, free_port, test_config

OUTPUT_ROOT = Path(os.environ.get("TEST_OUTPUT_DIR", Path(__file__).resolve().parents[1] / "test-output"))


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave artifacts (screenshots, logs) for people to look at."""
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    return OUTPUT_ROOT


@pytest.fixture(scope="session")
def demo_model():
    from serve_app.engine import load_model

    return load_model("demo", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def engine(demo_model):
    """The engine over the demo model (engine, scheduler and lanes tests)."""
    from serve_app.engine import Seq2SeqEngine

    return Seq2SeqEngine(demo_model.model)


@pytest.fixture(scope="session")
def tok(demo_model):
    """The demo model's tokenizer."""
    return demo_model.tokenizer


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeRun]:
    """The shipped config.yaml running for real under `serve run`, on the demo model, on a loopback port.

    The scheduler budgets and timeouts are the shipped values; the port, host and model change, and the
    precision is pinned to float32 (MT5_DTYPE): these tests compare answers across batch compositions to
    1e-5, which bfloat16's rounding (`dtype: auto` on AMX CPUs) does not promise (README, "Precision").
    The shipped `auto` runs over HTTP in the resilience, bench and cluster tests.
    """
    run = ServeRun(test_config(free_port()), tmp_path_factory.mktemp("serve"), env={"MT5_DTYPE": "float32"})
    run.start()
    yield run
    run.stop()


@pytest.fixture(scope="session")
def base_url(served: ServeRun) -> str:
    return served.url
