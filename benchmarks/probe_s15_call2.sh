#!/usr/bin/env bash
# Session 15, H200 call 2: the session's final tree (call 1's expand change reverted: the kernels are session
# 14's). The pallas GPU tests (call 1's run was cut by its time limit), then the compare on the decode
# cases, both ranks, both backends (call 3: prefill-8k and mixed). Kernels lowered ahead on a CPU machine.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
timeout 170 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/gpu_tests.txt 2>&1
timeout 330 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/compare_decode.json \
    --case 'llama3-8b-r*-decode-*' > $R/compare_decode.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $R/gpu_tests.txt | cut -c1-200 | tail -8; tail -n 3 $R/compare_decode.txt
