#!/usr/bin/env bash
# Session 17, H200 call 5 (issue 16): the rank-16 persistent expand with 64-wide tiles on two CTAs per SM (four or
# six tiles in flight each) or three (four each), against the default (two CTAs per SM, 128 wide, four in flight),
# prefill-8k and mixed, graph-batched, float64-checked.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=.pallas-cache
timeout 170 python3 benchmarks/decode_kernels.py --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed \
    --ops expand,expand_qkv --backends triton,pallas,pallas:c396bn64ss4,pallas:c264bn64ss4,pallas:c264bn64ss6 \
    --no-profile --budget-s 150 --json $OUT/s17c5_bn64.json > $OUT/s17c5_bn64.txt 2>&1
tail -n 24 $OUT/s17c5_bn64.txt
