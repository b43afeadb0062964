"""Shared fixtures, the suite's markers, and the order that lets tests share one service start-up.

Every test carries one of the markers registered in pyproject.toml: `unit` (in-process, seconds),
`service` (starts `serve run` or Ray), `cluster` (several Ray nodes), `browser` (headless Chromium).
`pytest -m unit` is the quick loop.

The session's shared services (`served`, `guarded`) start once each. The tests that use one are run
one after the other, those that disrupt it (kill its replicas) last, and it is stopped as soon as the
last of them has run, so an idle Ray does not take CPU from the tests after it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ServeRun, guarded_service, service

OUTPUT_ROOT = Path(os.environ.get("TEST_OUTPUT_DIR", Path(__file__).resolve().parents[1] / "test-output"))

# A shell without job control starts a background command (`pytest ... &`) with SIGINT ignored, and every
# process the tests start would inherit that: the Ctrl+C tests would then wait for a job that never stops.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

KINDS = ("unit", "service", "cluster", "browser")
SHARED_SERVICES = ("served", "guarded")  # session fixtures, each started once and stopped after its last user
_running: dict[str, ServeRun] = {}
_last_user: dict[str, str] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test without a kind; run the modules that use a shared service in one block, at the place of
    the first, with the modules that disrupt it last (whole modules, so that their own module-scoped fixtures
    start once)."""
    untyped = [item.nodeid for item in items if not any(item.get_closest_marker(kind) for kind in KINDS)]
    if untyped:
        raise pytest.UsageError(f"tests without one of the markers {', '.join(KINDS)}: {', '.join(untyped[:5])}")
    placed: set[Path] = set()
    for name in SHARED_SERVICES:
        sharing = [
            path
            for path in dict.fromkeys(item.path for item in items if name in getattr(item, "fixturenames", ()))
            if path not in placed
        ]
        if not sharing:
            continue
        placed.update(sharing)
        block = [item for item in items if item.path in sharing]
        block.sort(
            key=lambda item: item.get_closest_marker("disrupts_service") is not None
        )  # stable: file order otherwise
        first = next(index for index, item in enumerate(items) if item.path in sharing)
        rest = [item for item in items if item.path not in sharing]
        items[:] = rest[:first] + block + rest[first:]


def pytest_collection_finish(session: pytest.Session) -> None:
    for name in SHARED_SERVICES:
        users = [item for item in session.items if name in getattr(item, "fixturenames", ())]
        if users:
            _last_user[name] = users[-1].nodeid


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    for name, last in _last_user.items():
        if nodeid == last and name in _running:
            _running.pop(name).stop(signal.SIGTERM)  # the session fixture's own teardown later finds it stopped


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
def demo_model_as_built():
    """The demo model with transformers' own nn.Linear layers (no measured head layout, no oneDNN packing), for
    tests that copy it and re-lay it themselves: a packed weight is an opaque tensor that cannot be deep-copied, and
    whether `demo_model` is packed depends on a timing probe."""
    from serve_app.engine import load_model

    return load_model("demo", device="cpu", dtype="float32", relay_head=False)


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

    The scheduler budgets, timeouts and the deployment graph are the shipped ones; the port, host and
    model change, and the precision is pinned to float32 (MT5_DTYPE): these tests compare answers across
    batch compositions to 1e-5, which bfloat16's rounding does not promise (README, "Precision").
    The shipped `dtype: auto` runs over HTTP in the resilience, security, benchmark and cluster tests; the
    classification cache is off (below).
    """
    # The classification cache is off here: these tests compare an answer alone with the same request inside a
    # batch, which a cache hit would turn into comparing an answer with itself (tests/test_teams.py tests the cache).
    no_cache = {"classification_cache": {"entries": 0}}
    with service(tmp_path_factory.mktemp("serve"), args=no_cache, env={"MT5_DTYPE": "float32"}) as run:
        _running["served"] = run
        yield run
        _running.pop("served", None)


@pytest.fixture(scope="session")
def base_url(served: ServeRun) -> str:
    return served.url


@pytest.fixture(scope="session")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeRun]:
    """The shipped config.yaml (dtype auto) locked down and small: tests/servers.guarded_service."""
    with guarded_service(tmp_path_factory.mktemp("guarded")) as run:
        _running["guarded"] = run
        yield run
        _running.pop("guarded", None)
