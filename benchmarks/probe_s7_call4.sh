#!/usr/bin/env bash
# Session 7, H200 call 4 (the last ~5 minutes of device time): the pallas GPU contract tests of the stacked ops on
# the rank-64 and rank-128 cases (stacked slices moved with 16-byte accesses), call 3's capture probe (it called the
# registry wrongly there) with more captures, then the rank-64 stacked decode expands kernel by kernel.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call4.tar.gz r; }
trap pack EXIT
timeout 70 python3 -m pytest tests/gpu/test_contract_gpu.py -q -n 8 -rfE -p no:cacheprovider \
    -k "pallas and bfloat16 and (r64 or r128) and (qkv or gate_up)" > $R/gpu_tests.txt 2>&1
timeout 45 python3 benchmarks/capture_probe.py --case llama3-8b-r64-decode-256 --op qkv --captures 300 \
    --json $R/capture_r64_qkv.json > $R/capture_r64_qkv.txt 2>&1
timeout 50 python3 benchmarks/decode_kernels.py --budget-s 40 --cases llama3-8b-r64-decode-64,llama3-8b-r64-decode-256 \
    --ops expand_qkv,qkv,expand_gate_up --backends pallas --json $R/decode_r64.json > $R/decode_r64.txt 2>&1
