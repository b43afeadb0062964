"""API keys: the one unnamed key of `api_key_env` / `api_key_file`, and named keys with limits from a YAML file.

The named-keys file (config.yaml's `api_keys_file`; MT5_API_KEYS_FILE overrides it) is a list of

    - name: team-a
      key_sha256: <sha256 hex digest of the key>   # the key itself is never stored
      requests_per_minute: 30                      # absent: unlimited
      generated_tokens_per_day: 200000             # absent: unlimited

Every Ingress replica reads the file itself and looks at it again at most every RELOAD_CHECK_S seconds: a key
added, changed or removed takes effect without a restart. A file that stops parsing keeps the last good keys (and
says so in the log), so a half-written edit never locks every team out.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

logger = logging.getLogger("ray.serve")

RELOAD_CHECK_S = 1.0  # how stale a replica's view of the file may be (a removed key: refused within a few seconds)
DEFAULT_KEY_NAME = "default"  # the caller named in metrics when the single unnamed key is used
TEAM_OWNER = "team:"  # a named key's jobs are owned by "team:<name>" (the single key's by "key:<digest>")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a Prometheus label value and a log word


class KeyLimits(BaseModel):
    """A key's budget; None = unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(None, ge=1)
    generated_tokens_per_day: int | None = Field(None, ge=1)

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute is None and self.generated_tokens_per_day is None


class NamedKey(KeyLimits):
    name: str
    key_sha256: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("a key's name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
        return value

    @field_validator("key_sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("key_sha256 is the key's SHA-256 digest: 64 hex digits (sha256sum of the key)")
        return value

    @property
    def limits(self) -> KeyLimits:
        return KeyLimits(
            requests_per_minute=self.requests_per_minute, generated_tokens_per_day=self.generated_tokens_per_day
        )


NAMED_KEYS = TypeAdapter(list[NamedKey])


@dataclass(frozen=True)
class Caller:
    """Who a request's key belongs to: `name` labels its metrics and logs, `owner` owns its jobs."""

    name: str
    owner: str
    limits: KeyLimits


ANONYMOUS = Caller("anonymous", "anonymous", KeyLimits())  # everyone, when no key is configured


def key_digest(key: str | bytes) -> str:
    """The SHA-256 hex digest a named-keys file stores for `key`."""
    return hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).hexdigest()


def read_named_keys(path: Path) -> list[NamedKey]:
    """The file's keys, or ValueError naming the entry and the rule (names and digests unique)."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not YAML: {error}") from None
    try:
        keys = NAMED_KEYS.validate_python(loaded if loaded is not None else [])
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{path}: entry {where}: {first['msg']}") from None
    for field in ("name", "key_sha256"):
        values = [getattr(key, field) for key in keys]
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            shown = repeated[0] if field == "name" else repeated[0][:12] + "…"
            raise ValueError(f"{path}: {field} {shown} appears more than once")
    return keys


def team_of(owner: str) -> str | None:
    """The named key that owns a job (its `owner`), or None for the single key or anonymous callers."""
    return owner.removeprefix(TEAM_OWNER) if owner.startswith(TEAM_OWNER) else None


class KeyTable:
    """Every key this service accepts, by digest: the named keys of a file (re-read when it changes) and the single
    unnamed key. Empty = auth off."""

    def __init__(
        self,
        single_key: str | None,
        keys_file: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.single: dict[str, Caller] = {}
        if single_key is not None:
            digest = key_digest(single_key)
            # Never the key itself: a digest names the caller in the job store.
            self.single[digest] = Caller(DEFAULT_KEY_NAME, "key:" + digest[:16], KeyLimits())
        self.path = Path(keys_file).expanduser() if keys_file else None
        self.named: dict[str, Caller] = {}
        self._seen: tuple[int, int, int] | None = None
        self._checked = -float("inf")
        if self.path is not None:
            self._load(strict=True)

    @property
    def enabled(self) -> bool:
        """Auth is on: a key is configured (the single one, or a named-keys file, even an empty one)."""
        return bool(self.single) or self.path is not None

    def caller(self, key: bytes) -> Caller | None:
        """Whose key this is, or None for an unknown key."""
        self._reload_if_changed()
        digest = key_digest(key)
        return self.named.get(digest) or self.single.get(digest)

    def _reload_if_changed(self) -> None:
        now = self.clock()
        if self.path is None or now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        self._load(strict=False)

    def _load(self, strict: bool) -> None:
        assert self.path is not None
        try:
            stat = self.path.stat()
        except OSError as error:
            if strict:
                raise ValueError(f"api_keys_file {self.path}: {error.strerror}") from None
            if self.named:
                logger.error("api_keys_file %s: %s; every named key is refused until it is back", self.path, error)
            self.named, self._seen = {}, None
            return
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)  # an edit in place or a file renamed over it
        if seen == self._seen:
            return
        try:
            keys = read_named_keys(self.path)
        except (OSError, ValueError) as error:
            if strict:
                raise ValueError(str(error)) from None
            logger.error(
                "api_keys_file changed but cannot be used (%s); keeping the %d key(s) read before",
                error,
                len(self.named),
            )
            self._seen = seen
            return
        self.named = {key.key_sha256: Caller(key.name, TEAM_OWNER + key.name, key.limits) for key in keys}
        self._seen = seen
        logger.info(
            "api_keys_file %s: %d named key(s): %s", self.path, len(keys), ", ".join(k.name for k in keys) or "none"
        )
