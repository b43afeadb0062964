#!/usr/bin/env bash
# Install the service into .venv and run config.yaml on this machine (port 7860).
# Usage: bash scripts/serve.sh            # the real model (downloaded once from ModelScope)
#        MT5_MODEL=demo bash scripts/serve.sh   # the built-in demo model, offline
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first and pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e .
# The model is fetched here, once, with progress; a model that cannot be had stops here with one message.
.venv/bin/python -m serve_app.preflight config.yaml
exec .venv/bin/serve run config.yaml
