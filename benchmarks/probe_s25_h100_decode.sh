#!/usr/bin/env bash
# Session 25, on the H100, after its decode table was re-tuned (probe_s25_tune.sh): issue 16's decode ratios
# (pallas against triton, every decode case, same run).
# Usage (device tool): bash benchmarks/probe_s25_h100_decode.sh
set -u
P=s25h4
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
export XLA_PYTHON_CLIENT_PREALLOCATE=false
t0=$SECONDS
PYTHONPATH=. timeout 200 python3 -m lora compare --quick --backends triton,pallas --no-progress \
    --case 'llama3-8b-r*-decode-*' --json $R/${P}_decode.json > $R/${P}_decode.txt 2>&1
echo "== decode rc=$? $((SECONDS - t0)) s"; tail -n 1 $R/${P}_decode.txt | cut -c1-160
