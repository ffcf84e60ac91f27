#!/usr/bin/env bash
# Session 18, H200 call 4 (issue 16): shrink tunings on the mixed rows still over 1.15x triton, side by side
# in one process, with the per-kernel profile: the rank-64 down projection (8412 tokens: the 16384-token
# bucket) without extra units, with four K splits (default and four stages); the rank-16 QKV-sized shrinks
# (7119 tokens: 112 blocks for 132 SMs) split in two along K on two CTAs per SM (three or four stages), and
# without extra units; prefill-8k beside them.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
cd benchmarks
PYTHONPATH=.. timeout 120 python3 decode_kernels.py --cases llama3-8b-r64-mixed --ops shrink_down \
    --backends triton,pallas,pallas:noxu,pallas:ks4,pallas:ks4st4,pallas:ks2st3 \
    --json $OUT/s18c4_r64_shrink_down.json > $OUT/s18c4_r64_shrink_down.txt 2>&1
cut -c1-160 $OUT/s18c4_r64_shrink_down.txt | grep -v "^ *$" | head -40
PYTHONPATH=.. timeout 200 python3 decode_kernels.py --cases llama3-8b-r16-mixed,llama3-8b-r16-prefill-8k --ops shrink1,shrink2,shrink3 \
    --backends triton,pallas,pallas:ks2st4,pallas:ks2st3,pallas:noxu \
    --json $OUT/s18c4_r16_shrinks.json > $OUT/s18c4_r16_shrinks.txt 2>&1
cut -c1-160 $OUT/s18c4_r16_shrinks.txt | grep -v "^ *$" | head -80
