#!/usr/bin/env bash
# Session 6, H200 call 3: the compare on the decode cases (both ranks, both backends) with the session's
# decode defaults (accumulating expand, split-K by steps), the decode step, then the pallas graph-safety and GPU tests.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
timeout 200 python3 -m lora compare --quick --backends triton,pallas --case '*decode*' --no-progress \
    --json $R/compare_decode.json > $R/compare_decode.txt 2>&1
timeout 110 python3 -m lora compare --step --quick --backends triton,pallas --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
timeout 150 python3 -m pytest tests/gpu/test_graph_safety.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graphs.py \
    -q -n 8 -rfE -p no:cacheprovider -k pallas > $R/gpu_tests.txt 2>&1
