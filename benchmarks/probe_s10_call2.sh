#!/usr/bin/env bash
# Session 10, H200 call 2 (issue 16): the shrink writes x's dtype (the op's result in place; a fused op's expand
# reads it as it is). Pallas GPU contract / graph tests; prefill and decode ops kernel by kernel; the decode
# step. Kernels lowered ahead on a CPU machine (benchmarks/pallas_prelower.py) come from the carried cache.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
ls .pallas-cache | wc -l > $R/cache_entries.txt
DK="python3 benchmarks/decode_kernels.py"
timeout 140 $DK --budget-s 125 --cases llama3-8b-r16-prefill-8k,llama3-8b-r64-prefill-8k \
    --ops shrink1,shrink3,qkv,gate_up --backends pallas --json $R/prefill.json > $R/prefill.txt 2>&1
timeout 100 $DK --budget-s 85 --cases llama3-8b-r16-decode-64,llama3-8b-r16-decode-256,llama3-8b-r64-decode-64 \
    --ops shrink1,qkv,gate_up --backends pallas --json $R/decode.json > $R/decode.txt 2>&1
timeout 120 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 8 -rfE -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/gpu_tests.txt 2>&1
timeout 110 python3 -m lora compare --step --quick --backends pallas --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
