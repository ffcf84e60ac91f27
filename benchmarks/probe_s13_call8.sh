#!/usr/bin/env bash
# Session 13, H200 call 8: the session's final tree (group heads reverted): the triton GPU suite.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p $OUT/r
timeout 100 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py tests/lora/test_batch_metadata.py -q -n 8 \
    -k "triton" -rfE -p no:cacheprovider > $OUT/r/gpu_tests.txt 2>&1
tail -2 $OUT/r/gpu_tests.txt
