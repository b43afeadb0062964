"""KeyLedger: the one place that counts what each limited API key used, for every Ingress replica at once.

A limit counted per Ingress replica would grow with the replicas (three replicas: three times the quota). One
replica of this deployment (config.yaml) holds the Usage (serve_app/access/usage.py); an Ingress asks it before a
limited key's request and tells it the tokens generated after. Unlimited keys never call it. Its counts live in
memory: a restart of this replica forgets the current minute and day (README, "API keys").
"""

from __future__ import annotations

from ray import serve

from serve_app.access.keys import KeyLimits
from serve_app.access.usage import Refusal, Usage

LEDGER_TIMEOUT_S = 2.0  # a caller waits at most this long for the KeyLedger, then goes on uncounted


@serve.deployment(name="KeyLedger")
class KeyLedger:
    def __init__(self) -> None:
        self.usage = Usage()

    def admit(self, name: str, limits: KeyLimits, generates: bool = True) -> Refusal | None:
        """Count a request of key `name`, or the limit that refuses it (Usage.admit)."""
        return self.usage.admit(name, limits, generates)

    def charge(self, name: str, tokens: int) -> None:
        """Tokens generated for key `name`'s request."""
        self.usage.charge(name, tokens)
