#!/usr/bin/env bash
# Session 12, H200 call 1 (issue 17, triton prefill / mixed): the grouping's chunk lookup without its dependent
# load of group_start (A/B against the previous tree, carried in .ab/old), then a wide tune of the rank-64
# prefill / mixed buckets and the rank-16 expands (these were tuned with 12 candidates each), written over a
# copy of the shipped table, and the compare on every default case with that table.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
PRE=(--case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed')
(cd .ab/old && PYTHONPATH=. timeout 60 python3 -m lora compare --quick --backends triton "${PRE[@]}" --no-progress \
    --json $R/old_prefill.json > $R/old_prefill.txt 2>&1)
timeout 80 python3 -m lora compare --quick --backends triton --no-progress --json $R/new_all.json \
    > $R/new_all.txt 2>&1
cp lora/triton/tables/nvidia-h200.json $R/tables/
timeout 250 python3 -m lora tune --model llama3-8b --ranks 64 --regimes prefill,mixed --max-candidates 120 \
    --budget-s 200 --out $R/tables/ --no-progress > $R/tune_r64.log 2>&1
timeout 90 python3 -m lora tune --model llama3-8b --ranks 16 --regimes prefill,mixed \
    --ops expand,expand_qkv,expand_gate_up --max-candidates 80 --budget-s 60 --out $R/tables/ --no-progress \
    > $R/tune_r16_expand.log 2>&1
KERNELSTACK_TUNE_DIR=$R/tables timeout 80 python3 -m lora compare --quick --backends triton --no-progress \
    --json $R/tuned_all.json > $R/tuned_all.txt 2>&1
KERNELSTACK_TUNE_DIR=$R/tables python3 -m lora list > $R/list.txt 2>&1
