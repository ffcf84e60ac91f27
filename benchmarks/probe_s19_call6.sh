#!/usr/bin/env bash
# Session 19, H200 call 6 (issue 16): after the review mend (one on_tile rule for a step's first and further
# adapters; behaviour unchanged): the pallas GPU tests, and the rank-64 mixed stacked expands beside call 2's.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache PYTHONPATH=.
timeout 110 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $OUT/s19c6_gpu_tests.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/s19c6_gpu_tests.txt | cut -c1-200 | tail -8
timeout 60 python3 -m lora compare --quick --backends pallas --no-progress --ops expand_qkv,expand_gate_up \
    --case llama3-8b-r64-mixed --json $OUT/s19c6_r64_mixed.json > $OUT/s19c6_r64_mixed.txt 2>&1
grep "\] llama" $OUT/s19c6_r64_mixed.txt | cut -c1-100
