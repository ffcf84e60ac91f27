#!/usr/bin/env bash
# Session 6, H200 call 4 (the last 220 s of device time): the decode step of the pallas backend again (call 3's
# rank-16 64-token step failed its per-call-metadata capture once), and the rank-64 one-slice decode expand at four
# stages, the final defaults.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call4.tar.gz r; }
trap pack EXIT
timeout 75 python3 -m lora compare --step --quick --backends pallas --case 'step-llama3-8b-r16-decode-64' \
    --case 'step-llama3-8b-r64-decode-64' --no-progress --json $R/step.json > $R/step.txt 2>&1
timeout 40 python3 benchmarks/decode_kernels.py --budget-s 30 --no-profile --cases llama3-8b-r64-decode-64 \
    --ops expand,shrink1 --backends pallas --json $R/decode_r64.json > $R/decode_r64.txt 2>&1
