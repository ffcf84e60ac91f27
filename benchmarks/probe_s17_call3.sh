#!/usr/bin/env bash
# Session 17, H200 call 3 (issue 16): the K-split block shrink of the down projection (K = 14336) under more
# splits and fewer stages (two CTAs per SM), rank 16 and 64, prefill-8k and mixed, with each op's kernels
# profiled (the shrink and the partial tiles' sum apart).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
timeout 200 python3 benchmarks/decode_kernels.py --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed --ops shrink_down \
    --backends triton,pallas,pallas:ks8,pallas:ks4st4,pallas:ks7st4,pallas:ks8st4,pallas:ks16st4,pallas:ks7 \
    --budget-s 180 --json $OUT/s17c3_shrink_down_r16.json > $OUT/s17c3_shrink_down_r16.txt 2>&1
tail -n 20 $OUT/s17c3_shrink_down_r16.txt | cut -c1-220
timeout 150 python3 benchmarks/decode_kernels.py --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed --ops shrink_down \
    --backends triton,pallas,pallas:ks4,pallas:ks2st3,pallas:ks4st3,pallas:ks7 \
    --budget-s 130 --json $OUT/s17c3_shrink_down_r64.json > $OUT/s17c3_shrink_down_r64.txt 2>&1
tail -n 16 $OUT/s17c3_shrink_down_r64.txt | cut -c1-220
