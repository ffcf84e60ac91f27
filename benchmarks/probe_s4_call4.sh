#!/usr/bin/env bash
# Session 4, H200 call 4 (the final tree): tests/gpu, then the prefill / mixed shrink ops with the shipped table.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call4.tar.gz r; }
trap pack EXIT
timeout 170 python3 -m pytest tests/gpu -q -n 8 -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
timeout 110 python3 -m lora compare --quick --backends triton --case 'llama3-8b-*-prefill-8k' --case 'llama3-8b-*-mixed' \
    --ops shrink1,shrink2,shrink3,shrink_down --no-progress --json $R/compare_shrink.json > $R/compare_shrink.txt 2>&1
