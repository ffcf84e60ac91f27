#!/usr/bin/env bash
# Session 7, H200 call 3: the sporadic capture failures of the pallas backend (benchmarks/capture_probe.py, on the
# op that failed in call 2 and on a rank-16 decode op), then the compare on the rank-16 prefill and mixed
# cases (the persistent expand now also reads its slots' ranks and scalings from shared memory).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
timeout 100 python3 benchmarks/capture_probe.py --case llama3-8b-r64-decode-256 --op qkv --captures 50 \
    --json $R/capture_r64_qkv.json > $R/capture_r64_qkv.txt 2>&1
timeout 60 python3 benchmarks/capture_probe.py --case llama3-8b-r16-decode-64 --op shrink1 --captures 50 \
    --json $R/capture_r16_shrink.json > $R/capture_r16_shrink.txt 2>&1
timeout 200 python3 -m lora compare --quick --backends triton,pallas --case 'llama3-8b-r16-prefill-8k' \
    --case 'llama3-8b-r16-mixed' --no-progress --json $R/compare_prefill.json > $R/compare_prefill.txt 2>&1
