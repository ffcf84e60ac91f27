#!/usr/bin/env bash
# Session 18, H200 call 3 (issue 16): call 2's side-by-side step again (its PYTHONPATH was wrong there): the
# rank-64 stacked ops with the new plan (two CTAs per SM, 64-wide tiles, three in flight) and the old one
# (pallas:c132bn128ss4: one CTA per SM, 128-wide tiles, four in flight), triton beside them, in one process.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
cd benchmarks && PYTHONPATH=.. timeout 200 python3 decode_kernels.py --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed \
    --ops expand_qkv,expand_gate_up,qkv,gate_up --backends triton,pallas,pallas:c132bn128ss4 --no-profile \
    --json $OUT/s18c3_r64_stacked.json > $OUT/s18c3_r64_stacked.txt 2>&1
cut -c1-120 $OUT/s18c3_r64_stacked.txt
