#!/usr/bin/env bash
# Here (with PyPI), before a GPU run: the wheels bench.gpu_suite needs that the lent GPU machine's
# image lacks (pydantic for serve_app.settings), for every CPython it might run (one folder each,
# .wheels/cp310 ... cp313: pydantic-core is compiled per version), into .wheels/ (git-ignored
# through .git/info/exclude), which the device tool's run carries (carry [".wheels"]); gpu_suite.sh
# installs the folder of the Python it finds. torch, transformers, sentencepiece, tokenizers and
# httpx are already there.
set -euo pipefail
versions="${*:-3.10 3.11 3.12 3.13}"  # the Pythons the GPU image may have
cd "$(dirname "$0")/.."
grep -qx '/.wheels/' .git/info/exclude 2>/dev/null || echo '/.wheels/' >> .git/info/exclude
rm -rf .wheels && mkdir -p .wheels
for version in $versions; do
  folder=".wheels/cp${version/./}"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$folder" pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
done
ls -1 .wheels/*
du -sh .wheels
