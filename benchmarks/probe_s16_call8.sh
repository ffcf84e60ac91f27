#!/usr/bin/env bash
# Session 16, H200 call 8: the triton GPU tests with the shipped table as committed after call 7 (its rank-16
# prefill gate-up expand entry uses ExpandPlan.acc_base).
set -u
export PYTHONPATH=.
timeout 200 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py -q -n 8 -k triton -rfE -p no:cacheprovider \
    > $OUT/s16c8_gpu_tests.txt 2>&1
tail -n 4 $OUT/s16c8_gpu_tests.txt
