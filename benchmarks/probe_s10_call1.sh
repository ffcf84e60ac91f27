#!/usr/bin/env bash
# Session 10, H200 call 1: where pallas prefill / mixed time goes (issue 16), kernel by kernel against
# triton, with the persistent expand's and block shrink's knobs; and the compare on the prefill and
# mixed cases, both ranks, both backends (the baseline of this session).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
DK="python3 benchmarks/decode_kernels.py --budget-s 150"
timeout 170 $DK --cases llama3-8b-r16-prefill-8k,llama3-8b-r64-prefill-8k,llama3-8b-r16-mixed \
    --ops shrink1,shrink3,expand,expand_qkv,qkv,gate_up --backends triton,pallas \
    --json $R/kernels.json > $R/kernels.txt 2>&1
timeout 60 $DK --cases llama3-8b-r16-prefill-8k,llama3-8b-r64-prefill-8k --ops shrink1,shrink3 \
    --backends pallas:ks2,pallas:st4 --json $R/knobs_shrink.json > $R/knobs_shrink.txt 2>&1
timeout 150 $DK --cases llama3-8b-r16-prefill-8k,llama3-8b-r64-prefill-8k --ops expand,expand_gate_up \
    --backends pallas:ss2,pallas:ss6,pallas:pbn128,pallas:tile,pallas:rdd \
    --json $R/knobs_expand.json > $R/knobs_expand.txt 2>&1
timeout 200 python3 -m lora compare --quick --backends triton,pallas --no-progress \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' --json $R/compare.json > $R/compare.txt 2>&1
