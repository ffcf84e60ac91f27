#!/usr/bin/env bash
# Session 15, H200 call 3: the compare on the prefill-8k and mixed cases, both ranks, both backends, on
# the session's final tree (the kernels of session 14). Kernels lowered ahead on a CPU machine.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
timeout 500 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/compare_prefill.json \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' > $R/compare_prefill.txt 2>&1
tail -n 3 $R/compare_prefill.txt
