#!/usr/bin/env bash
# Session 6, H200 call 1: decode, kernel by kernel (triton and pallas, all decode cases), the decode expand that
# accumulates every adapter in one accumulator against session 5's (pallas:s5), pallas decode knobs on r16
# decode-64, then the rank-16 prefill / mixed defaults (the pair shrink, first timed here).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
timeout 170 python3 benchmarks/decode_kernels.py --budget-s 150 --json $R/decode_kernels.json > $R/decode_kernels.txt 2>&1
timeout 100 python3 benchmarks/decode_kernels.py --budget-s 85 --backends pallas:s5 \
    --ops expand,expand_qkv,expand_gate_up,qkv,gate_up --json $R/decode_s5.json > $R/decode_s5.txt 2>&1
timeout 75 python3 benchmarks/decode_kernels.py --budget-s 60 --cases llama3-8b-r16-decode-64 --no-profile \
    --ops expand,expand_gate_up,qkv --backends pallas:bn64,pallas:bn256,pallas:noacc,pallas:es2 \
    --json $R/decode_knobs.json > $R/decode_knobs.txt 2>&1
timeout 40 python3 benchmarks/decode_kernels.py --budget-s 30 --cases llama3-8b-r16-decode-64 --no-profile \
    --ops shrink1 --backends pallas:ks8,pallas:ks32,pallas:bk128 --json $R/decode_knobs_shrink.json > $R/decode_knobs_shrink.txt 2>&1
timeout 120 python3 benchmarks/pallas_sweep.py --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed --tunings default \
    --budget-s 100 --json $R/prefill_sweep.json > $R/prefill_sweep.txt 2>&1
