#!/usr/bin/env bash
# Session 7, H200 call 4: call 3's capture probes again (the script called the registry wrongly there), with more
# captures per mode.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call4.tar.gz r; }
trap pack EXIT
timeout 90 python3 benchmarks/capture_probe.py --case llama3-8b-r64-decode-256 --op qkv --captures 400 \
    --json $R/capture_r64_qkv.json > $R/capture_r64_qkv.txt 2>&1
timeout 60 python3 benchmarks/capture_probe.py --case llama3-8b-r16-decode-64 --op shrink1 --captures 400 \
    --json $R/capture_r16_shrink.json > $R/capture_r16_shrink.txt 2>&1
