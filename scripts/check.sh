#!/usr/bin/env bash
# The seconds-long checks, run before the tests (scripts/test.sh) and by the pre-commit hooks:
# lint, format and types. Stops at the first that fails, with that tool's own message.
# Usage: bash scripts/check.sh   (after scripts/test.sh has installed .venv once)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff check" && .venv/bin/ruff check .
echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== mypy" && .venv/bin/mypy
