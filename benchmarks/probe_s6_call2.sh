#!/usr/bin/env bash
# Session 6, H200 call 2: decode shrink structures (split-K per adapter vs the block variant with its K loop split,
# which has ksplit partial tiles per block instead of adapters x ksplit), the rank-64 stacked decode expands under
# the accumulating kernel's knobs, the pallas GPU tests (contract, graphs, graph safety), the decode step.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
timeout 110 python3 benchmarks/decode_kernels.py --budget-s 95 --no-profile \
    --cases llama3-8b-r16-decode-64,llama3-8b-r16-decode-256 --ops shrink1,qkv,shrink_down \
    --backends pallas,pallas:ks4,pallas:ks8,pallas:blk8,pallas:blk16,pallas:blk32 \
    --json $R/decode_shrink_knobs.json > $R/decode_shrink_knobs.txt 2>&1
timeout 50 python3 benchmarks/decode_kernels.py --budget-s 40 --no-profile --cases llama3-8b-r64-decode-64 \
    --ops expand_gate_up,expand_qkv --backends pallas,pallas:es2,pallas:noacc,pallas:s5 \
    --json $R/decode_r64_knobs.json > $R/decode_r64_knobs.txt 2>&1
timeout 100 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_graphs.py tests/gpu/test_graph_safety.py tests/gpu/test_pallas_gpu.py \
    -q -n 8 -rfE -p no:cacheprovider -k pallas > $R/gpu_tests.txt 2>&1
timeout 120 python3 -m lora compare --step --quick --backends triton,pallas --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
