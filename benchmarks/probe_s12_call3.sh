#!/usr/bin/env bash
# Session 12, H200 call 3: the tree that ends the session (the shipped H200 table of calls 1-2). The issue's
# compare on every default case, both ranks, both backends (pallas unchanged since session 11: its kernels
# lowered ahead on a CPU machine, benchmarks/pallas_prelower.py, come from the carried cache), and the decode step.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
ls .pallas-cache | wc -l > $R/cache_entries.txt
timeout 340 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/compare.json \
    > $R/compare.txt 2>&1
timeout 100 python3 -m lora compare --step --quick --backends triton,pallas --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
