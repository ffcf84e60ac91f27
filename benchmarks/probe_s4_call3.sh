#!/usr/bin/env bash
# Session 4, H200 call 3: the pallas expand with its row-slot copy off the critical path (A/B against call 2's
# figures, same timing method), then tests/gpu and the issue's measurement (`python -m lora compare`, all
# default cases, both ranks, triton and pallas). If the new expand fails, the previous one is put back first.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
timeout 110 python3 benchmarks/pallas_sweep.py --tunings default --cases llama3-8b-r16-prefill-8k,llama3-8b-r64-prefill-8k \
    --budget-s 95 --json $R/sweep_expand.json > $R/sweep_expand.txt 2>&1
if ! grep -q "pallas default        expand .* ok" $R/sweep_expand.txt; then
    echo "new expand failed: previous one restored" | tee $R/fallback.txt
    cp fallback/expand_kernel.py fallback/common.py lora/pallas/
fi
timeout 130 python3 -m pytest tests/gpu -q -n 8 -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
timeout 330 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/compare.json > $R/compare.txt 2>&1
