"""Access control and exposure: API key, CORS, and Ray's ports in what we ship."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.access import keys
from serve_app.access.keys import KeyTable
from serve_app.deployments.key_metrics import KeyMetrics
from serve_app.ingress.auth import KeyAccess, KeyLedgerClient, load_api_key
from tests.servers import GUARD_KEY, GUARD_ORIGIN

KEY = GUARD_KEY
ALLOWED_ORIGIN = GUARD_ORIGIN


@pytest.fixture(scope="module")
def locked(guarded) -> str:
    """The guarded service (tests/servers.guarded_service): an API key in the environment and one CORS origin
    allowed."""
    return guarded.url


BODY = {"text": "等了三天还没发货", "labels": ["物流延迟", "商品缺货"]}


@pytest.mark.service
def test_health_and_ui_stay_open(locked):
    assert httpx.get(f"{locked}/healthz").status_code == 200
    assert httpx.get(f"{locked}/").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": KEY},
    ],
    ids=["missing", "wrong", "basic-scheme", "longer", "no-scheme"],
)
@pytest.mark.service
def test_api_refuses_without_the_key_and_says_nothing_more(locked, headers):
    response = httpx.post(f"{locked}/classify", json=BODY, headers=headers, timeout=60)
    assert response.status_code == 401
    assert response.json() == {"detail": "missing or invalid API key", "request_id": response.headers["x-request-id"]}
    assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{locked}/tasks", headers=headers).status_code == 401


@pytest.mark.service
def test_api_answers_with_the_key(locked):
    response = httpx.post(f"{locked}/classify", json=BODY, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 200 and response.json()["label"] in BODY["labels"]


@pytest.mark.service
def test_cors_allows_only_the_configured_origin(locked):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(f"{locked}/classify", headers={"Origin": ALLOWED_ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    other = httpx.options(f"{locked}/classify", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    answer = httpx.post(
        f"{locked}/classify",
        json=BODY,
        headers={"Origin": ALLOWED_ORIGIN, "Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


@pytest.mark.unit
def test_a_key_is_looked_up_by_its_digest_so_time_does_not_depend_on_the_guess(monkeypatch):
    """The middleware never compares the token with a key byte by byte: it hashes the token (SHA-256) and looks the
    digest up, so how long an answer takes says nothing about how much of a guess was right."""
    hashed = []
    real = keys.key_digest
    monkeypatch.setattr(keys, "key_digest", lambda key: hashed.append(key) or real(key))
    app = FastAPI()
    app.get("/data")(lambda: {"ok": True})
    table = KeyTable("abc", None)
    client = TestClient(KeyAccess(app, keys=table, ledger=KeyLedgerClient(None), metrics=QuietMetrics()))
    assert client.get("/data", headers={"Authorization": "Bearer abd"}).status_code == 401
    assert client.get("/data", headers={"Authorization": "Bearer abc"}).json() == {"ok": True}
    assert hashed == ["abc", b"abd", b"abc"]  # the configured key once, at start; then each request's token
    assert table.single == {real("abc"): table.single[real("abc")]}  # only the digest is kept


class QuietMetrics(KeyMetrics):
    """KeyMetrics without Ray's metric objects (no Ray here); what it is told is kept for the test to read."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def request(self, key: str, route: str, status: int) -> None:
        self.seen.append((key, route, status))


@pytest.mark.unit
def test_key_from_file_and_empty_keys(tmp_path: Path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert load_api_key("MT5_API_KEY", str(key_file)) == "from-file"
    monkeypatch.delenv("MT5_API_KEY", raising=False)
    assert load_api_key("MT5_API_KEY", None) is None
    monkeypatch.setenv("MT5_API_KEY", "  ")
    with pytest.raises(ValueError, match="empty"):
        load_api_key("MT5_API_KEY", None)
    key_file.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_api_key("MT5_API_KEY", str(key_file))
