#!/usr/bin/env bash
# Session 7, H200 call 1: the pallas GPU tests with the partial-tile sum kernel and the decode expand's adapters
# spread over CTAs (groups), then every decode op kernel by kernel (pallas, and pallas with one CTA per tile as
# in session 6), then the decode step.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
timeout 170 python3 -m pytest tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py tests/gpu/test_graphs.py \
    -q -n 8 -rfE -p no:cacheprovider -k pallas > $R/gpu_tests.txt 2>&1
timeout 230 python3 benchmarks/decode_kernels.py --budget-s 210 --backends pallas,pallas:grp0 \
    --json $R/decode_kernels.json > $R/decode_kernels.txt 2>&1
timeout 120 python3 -m lora compare --step --quick --backends triton,pallas --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
