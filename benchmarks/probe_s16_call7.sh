#!/usr/bin/env bash
# Session 16, H200 call 7 (issue 17, triton prefill / mixed): the expand's second epilogue (ExpandPlan.acc_base,
# base_output as the dot's accumulator) joins the tuner's candidates. Tune the prefill / mixed expand buckets of
# both ranks over a copy of the shipped table, then run the compare on the prefill-8k and mixed cases
# with the result, and the forced-plan tests on the GPU (acc_base plans among them).
# (Call 6, the forced-plan probe, could not run: the machine was taken back mid-call.)
set -u
export PYTHONPATH=.
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/call7.tar.gz r; }
trap pack EXIT
cp lora/triton/tables/nvidia-h200.json $R/tables/
timeout 130 python3 -m lora tune --model llama3-8b --ranks 16,64 --regimes prefill,mixed \
    --ops expand,expand_qkv,expand_gate_up --max-candidates 40 --budget-s 90 --out $R/tables/ --no-progress \
    > $R/tune_expand.log 2>&1
tail -n 12 $R/tune_expand.log
KERNELSTACK_TUNE_DIR=$R/tables timeout 150 python3 -m lora compare --quick --backends triton --no-progress \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' --json $R/compare.json > $R/compare.txt 2>&1
tail -n 3 $R/compare.txt
KERNELSTACK_TUNE_DIR=$R/tables timeout 60 python3 -m pytest tests/lora/test_triton_planning.py -q -n 8 \
    -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
tail -n 3 $R/gpu_tests.txt
