"""An earlier revision's files, for running it side by side with this checkout (`bench serve --against`,
`bench against`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.lib.results import ROOT


def checkout(ref: str, target: Path) -> Path:
    """The repository's files at `ref` (git archive) under `target`, which must not exist yet."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def git(*args: str) -> str:
    """A git command's output in this checkout."""
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()
