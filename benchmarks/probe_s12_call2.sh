#!/usr/bin/env bash
# Session 12, H200 call 2 (issue 17, triton prefill / mixed): stream-K shrink plans (ShrinkPlan.stream_k) join
# the tuner's prefill candidates. Tune every prefill / mixed bucket of both ranks over a copy of the shipped
# table, run the compare on every default case with the result, and the GPU tests of the triton
# backend with it (tests/lora/test_triton_planning.py runs the stream-K plans forced, on the GPU).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
cp lora/triton/tables/nvidia-h200.json $R/tables/
timeout 200 python3 -m lora tune --model llama3-8b --ranks 16,64 --regimes prefill,mixed \
    --ops shrink1,shrink2,shrink3,shrink_down --max-candidates 150 --budget-s 170 --out $R/tables/ --no-progress \
    > $R/tune_shrink.log 2>&1
timeout 90 python3 -m lora tune --model llama3-8b --ranks 16,64 --regimes prefill,mixed \
    --ops expand,expand_qkv,expand_gate_up --max-candidates 90 --budget-s 60 --out $R/tables/ --no-progress \
    > $R/tune_expand.log 2>&1
KERNELSTACK_TUNE_DIR=$R/tables timeout 80 python3 -m lora compare --quick --backends triton --no-progress \
    --json $R/tuned_all.json > $R/tuned_all.txt 2>&1
KERNELSTACK_TUNE_DIR=$R/tables timeout 140 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py -q -n 8 \
    -k triton -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
