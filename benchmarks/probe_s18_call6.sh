#!/usr/bin/env bash
# Session 18, H200 call 6 (issue 16, diagnosis): where the rank-64 stacked expands lose time on mixed batches:
# segment boundaries (blocks of two adapters) or the partial last block (run tile by tile after the
# pipeline). One segment of 8448 tokens (132 full blocks) and of 8412 (a partial last block), 32 segments
# of 8448 and of 8412 tokens; triton beside pallas, QKV and gate-up expands.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache PYTHONPATH=.
for segs in lens:8448 lens:8412 prefill:8448/32 prefill:8412/32; do
    name=r64-$(echo $segs | tr ':/' '-x')
    timeout 100 python3 -m lora compare --quick --backends triton,pallas --no-progress --ops expand_qkv,expand_gate_up \
        --shape "r=64,segs=$segs,name=$name" --json $OUT/s18c6_$name.json > $OUT/s18c6_$name.txt 2>&1
    grep "pass\|FAIL\|rror" $OUT/s18c6_$name.txt | head -4
done
