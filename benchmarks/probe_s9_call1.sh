#!/usr/bin/env bash
# Session 9, H200 call 1 (issue 17): the all-slots decode expand (one dot over every slot's B per row block).
# GPU tests of the triton backend on heuristic plans (the all-slots expand on every small-rank decode batch),
# a decode tuning run of the rank-16 expands with all-slots candidates (on top of the shipped table), then the
# issue's compare on the rank-16 decode cases and the decode step with that table.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false LORA_GPU_BACKENDS=triton
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
LORA_TRITON_NO_TUNED=1 timeout 120 python3 -m pytest tests/gpu -q -n 8 -rfE -p no:cacheprovider -k triton \
    > $R/gpu_tests_heuristic.txt 2>&1
cp lora/triton/tables/nvidia-h200.json $R/tables/
timeout 140 python3 -m lora tune --model llama3-8b --ranks 16 --regimes decode --ops expand,expand_qkv,expand_gate_up \
    --max-candidates 30 --budget-s 120 --out $R/tables/ --no-progress > $R/tune.log 2>&1
KERNELSTACK_TUNE_DIR=$R/tables timeout 120 python3 -m lora compare --quick --backends triton \
    --case 'llama3-8b-r16-decode-*' --no-progress --json $R/compare_r16_decode.json > $R/compare_r16_decode.txt 2>&1
KERNELSTACK_TUNE_DIR=$R/tables timeout 90 python3 -m lora compare --step --quick --backends triton --no-progress \
    --json $R/step.json > $R/step.txt 2>&1
