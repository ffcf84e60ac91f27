#!/usr/bin/env bash
# Fetch the peers' LoRA kernels for benchmarks/peers (never committed: .peers/ is git-ignored).
# SGLang and vLLM are downloaded as wheels without their dependencies; only the subtrees the adapters
# import are unpacked into .peers/src. Pure-Python helpers they import (pydantic, msgspec) are unpacked
# into .peers/site/py3XX for this interpreter and for the device's Python 3.12; run.py uses them only
# when the interpreter has none of its own.
# Usage: bash benchmarks/peers/fetch.sh [DEST]   (default .peers; versions: SGLANG_VERSION, VLLM_VERSION)
set -euo pipefail
DEST=${1:-.peers}
SGLANG=${SGLANG_VERSION:-0.5.23}
VLLM=${VLLM_VERSION:-0.33.0}
WHEELS=$DEST/wheels
mkdir -p "$WHEELS" "$DEST/src"
pip download --no-deps -q -d "$WHEELS" "sglang==$SGLANG" "vllm==$VLLM"
unzip -q -o "$WHEELS"/sglang-"$SGLANG"-*.whl 'sglang/srt/lora/*' 'sglang/kernels/ops/lora/*' \
    sglang/kernels/registry.py sglang/kernels/spec.py -d "$DEST/src"
unzip -q -o "$WHEELS"/vllm-"$VLLM"-*.whl 'vllm/lora/ops/*' 'vllm/triton_utils/*' -d "$DEST/src"
for py in "$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" 3.12; do
    tag=py${py/./}
    [ -d "$DEST/site/$tag" ] && continue
    pip download -q --only-binary=:all: --python-version "$py" --platform manylinux2014_x86_64 \
        -d "$WHEELS/$tag" pydantic msgspec
    mkdir -p "$DEST/site/$tag"
    for w in "$WHEELS/$tag"/*.whl; do unzip -q -o "$w" -d "$DEST/site/$tag"; done
done
echo "peers in $DEST/src: sglang $SGLANG, vllm $VLLM"
