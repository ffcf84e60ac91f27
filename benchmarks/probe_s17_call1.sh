#!/usr/bin/env bash
# Session 17, H200 call 1 (issue 16): the persistent expand on two or three CTAs per SM (Tuning.expand_ctas),
# 128-wide tiles with fewer tiles in flight each, against the default (132 CTAs, 256-wide tiles) and the
# same 128-wide tiles on 132 CTAs (pbn128), rank 16, prefill-8k and mixed, graph-batched, float64-checked.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=.pallas-cache
timeout 420 python3 benchmarks/decode_kernels.py --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed \
    --ops expand,expand_qkv,expand_gate_up,gate_up \
    --backends triton,pallas,pallas:c264,pallas:c264ss2,pallas:c396ss2,pallas:pbn128 \
    --no-profile --budget-s 380 --json $OUT/s17c1_ctas.json > $OUT/s17c1_ctas.txt 2>&1
tail -n 60 $OUT/s17c1_ctas.txt
timeout 100 python3 benchmarks/decode_kernels.py --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed --ops expand \
    --backends triton,pallas,pallas:c264bn64 --no-profile --budget-s 80 --json $OUT/s17c1_ctas_r64.json \
    > $OUT/s17c1_ctas_r64.txt 2>&1
tail -n 10 $OUT/s17c1_ctas_r64.txt
