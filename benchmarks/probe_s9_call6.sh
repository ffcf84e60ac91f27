#!/usr/bin/env bash
# Session 9, H200 call 6 (issue 17): PDL between a fused op's shrink and expand becomes a per-shape tuned choice
# (call 5: the rank-16 256-token gate_up is 26.4 us without it, 31.8 with it). GPU tests of the triton backend;
# a decode tuning run of qkv / gate_up (two launches with PDL, one launch, two launches without PDL) on top of the
# shipped table; the decode step and the decode compare with that table.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false LORA_GPU_BACKENDS=triton
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/call6.tar.gz r; }
trap pack EXIT
timeout 100 python3 -m pytest tests/gpu -q -n 8 -rfE -p no:cacheprovider -k triton > $R/gpu_tests.txt 2>&1
cp lora/triton/tables/nvidia-h200.json $R/tables/
timeout 120 python3 -m lora tune --model llama3-8b --regimes decode --ops qkv,gate_up --max-candidates 3 \
    --budget-s 100 --out $R/tables/ --no-progress > $R/tune_fused.log 2>&1
KERNELSTACK_TUNE_DIR=$R/tables timeout 60 python3 -m lora compare --step --quick --backends triton --no-progress \
    --json $R/step.json > $R/step.txt 2>&1
KERNELSTACK_TUNE_DIR=$R/tables timeout 60 python3 -m lora compare --quick --backends triton \
    --case 'llama3-8b-r*-decode-*' --no-progress --json $R/compare_decode.json > $R/compare_decode.txt 2>&1
