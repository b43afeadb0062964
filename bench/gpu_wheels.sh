#!/usr/bin/env bash
# Here (with PyPI), before a GPU run: the wheels bench.gpu_suite needs that the lent GPU machine's
# image lacks (pydantic for serve_app.settings), for its Python 3.12, into .wheels/ (git-ignored
# through .git/info/exclude), which the device tool's run carries (carry [".wheels"]). torch, transformers,
# sentencepiece, tokenizers and httpx are already there.
set -euo pipefail
python_version="${1:-3.12}"  # the GPU image's Python (another only to rehearse the run on this machine)
cd "$(dirname "$0")/.."
grep -qx '/.wheels/' .git/info/exclude 2>/dev/null || echo '/.wheels/' >> .git/info/exclude
rm -rf .wheels && mkdir -p .wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .wheels pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
ls -1 .wheels
du -sh .wheels
