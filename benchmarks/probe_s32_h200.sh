#!/usr/bin/env bash
# Session 32, issues 17 and 16, on an H200 only (exit 3 at once on another card): (1) the prefill / mixed shrink
# buckets re-tuned with the tuner's descriptor twins, compare before / after (probe_s32_tune_tma.sh); (2) the
# TMA tests and the forced-plan tests on the GPU; (3) the dense yardstick (cuBLAS, Triton pointers / descriptors).
# Usage (device tool): bash benchmarks/probe_s32_h200.sh [PREFIX]
set -u
P=${1:-s32h}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
grep -q H200 <<< "$GPU" || { echo "not an H200"; exit 3; }
bash benchmarks/probe_s32_tune_tma.sh $P
PYTHONPATH=. timeout 120 python3 -m pytest -q -p no:cacheprovider tests/lora/test_triton_planning.py 2>&1 | tail -3 \
    | tee $OUT/${P}_planning_tests.txt
cd benchmarks && PYTHONPATH=.. timeout 200 python3 dense_reference.py --json $OUT/${P}_dense_reference.json 2>&1 \
    | grep -v Warn > $OUT/${P}_dense_reference.txt; grep -E "r64 shrink3" $OUT/${P}_dense_reference.txt | head -20
