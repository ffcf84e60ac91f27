#!/usr/bin/env bash
# Session 7, H200 call 5 (the last device minutes): the capture probe in global mode with a garbage collection inside
# each capture, pallas with JAX kept to its CPU backend (lora.pallas.interop._import_jax), then triton for reference.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call5.tar.gz r; }
trap pack EXIT
timeout 45 python3 benchmarks/capture_probe.py --case llama3-8b-r64-decode-256 --op qkv --captures 300 \
    --modes global+gc,global --json $R/capture_pallas.json > $R/capture_pallas.txt 2>&1
timeout 30 python3 benchmarks/capture_probe.py --case llama3-8b-r64-decode-256 --op qkv --captures 300 \
    --backend triton --modes global+gc --json $R/capture_triton.json > $R/capture_triton.txt 2>&1
