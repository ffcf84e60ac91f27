#!/usr/bin/env bash
# Session 8, H200 call 3: gathering decode-expand CTAs walk 8 column tiles with 4 B tiles in flight (call 2: more
# tiles per CTA was faster on gate-up). Each decode op kernel by kernel: the default, 4 tiles (pallas:gt4), session
# 7's kernel (pallas:nogather); then the decode step, pallas and triton.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
timeout 240 python3 benchmarks/decode_kernels.py --budget-s 228 --ops expand,expand_qkv,expand_gate_up,qkv,gate_up \
    --backends pallas,pallas:gt4,pallas:nogather --json $R/decode_kernels.json > $R/decode_kernels.txt 2>&1
timeout 110 python3 -m lora compare --step --quick --backends triton,pallas --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
