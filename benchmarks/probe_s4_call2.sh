#!/usr/bin/env bash
# Session 4, H200 call 2: tune the prefill shrink buckets again over the widened plan grid (starting from the
# shipped table, which stays a candidate), then the issue's measurement: `python -m lora compare` (all
# default cases, both ranks, triton and pallas) and the decode step, with that table. Packed as $OUT/call2.tar.gz.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
cp lora/triton/tables/nvidia-h200.json $R/tables/
timeout 170 python3 -m lora tune --model llama3-8b --regimes prefill,mixed --ops shrink1,shrink2,shrink3,shrink_down \
    --budget-s 150 --max-candidates 40 --out $R/tables/ --no-progress > $R/tune.log 2>&1
export KERNELSTACK_TUNE_DIR=$R/tables
python3 -m lora list > $R/list.txt 2>&1
timeout 260 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/compare.json > $R/compare.txt 2>&1
timeout 120 python3 -m lora compare --step --quick --backends triton,pallas --no-progress --json $R/step.json > $R/step.txt 2>&1
