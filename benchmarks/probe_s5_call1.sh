#!/usr/bin/env bash
# Session 5, H200 call 1: issue 16's persistent expand (pallas) — GPU tests of pallas and of triton's PDL,
# then the expand sweep (persistent default vs one CTA per tile, and the persistent kernel's knobs).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
timeout 150 python3 -m pytest tests/gpu -q -n 8 -rfE -p no:cacheprovider -k 'pallas or pdl' > $R/gpu_tests.txt 2>&1
timeout 300 python3 benchmarks/pallas_sweep.py --budget-s 270 \
    --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed,llama3-8b-r64-prefill-8k \
    --tunings default,grid,noSwizzle,ss2,ss3,ss6,pBn256,pBn64 --json $R/pallas_sweep.json > $R/pallas_sweep.txt 2>&1
