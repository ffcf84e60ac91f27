#!/usr/bin/env bash
# Session 9, H200 call 7 (the final tree): every GPU test (both backends), the compare on every default
# case, both ranks (triton), and the decode step (triton), with the shipped table.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call7.tar.gz r; }
trap pack EXIT
timeout 60 python3 -m lora compare --quick --backends triton --no-progress --json $R/compare.json > $R/compare.txt 2>&1
timeout 40 python3 -m lora compare --step --quick --backends triton --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
timeout 170 python3 -m pytest tests/gpu -q -n 8 -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
