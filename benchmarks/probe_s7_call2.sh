#!/usr/bin/env bash
# Session 7, H200 call 2: the GPU contract tests of the plain stacked expands (the pallas torch executor now reads
# the caller's packed x as it is) and the pallas GPU/graph tests; the compare on the Llama decode cases
# (both ranks, triton and pallas); the prefill ops the change touches (the down-projection shrink's partial tiles
# are now added by the sum kernel; the stacked expands' x); the decode step. (Also the first GPU run of the expand
# reading its slots' ranks and scalings from shared memory.)
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
timeout 190 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 8 -rfE -p no:cacheprovider -k "pallas and not test_real_shapes or pallas and expand_" \
    > $R/gpu_tests.txt 2>&1
timeout 200 python3 -m lora compare --quick --backends triton,pallas --case 'llama3-8b-r*-decode-*' --no-progress \
    --json $R/compare_decode.json > $R/compare_decode.txt 2>&1
timeout 70 python3 -m lora compare --quick --backends triton,pallas --case 'llama3-8b-r16-prefill-8k' \
    --ops shrink_down,expand_qkv,expand_gate_up --no-progress --json $R/compare_prefill.json > $R/compare_prefill.txt 2>&1
timeout 110 python3 -m lora compare --step --quick --backends triton,pallas --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
