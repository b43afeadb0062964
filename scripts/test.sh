#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run the whole suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: Chromium (and a CJK font for its screenshots) for the UI tests, nginx for the load-balancer tests.
if ! command -v chromium >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi wenquanyi; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium nginx fonts-wqy-microhei >/dev/null
fi

# torch first and pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,bench]"

# Lint, format and types first: a style slip fails here in seconds, not after the suite.
bash scripts/check.sh

exec .venv/bin/python -m pytest "$@"
