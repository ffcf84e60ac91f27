#!/usr/bin/env bash
# Session 29, call 3 (main at the commit before this script; run as one command line on the warm H200 after
# call 1's whole-suite run was cut by its timeout): the pallas GPU tests alone. Carry .pallas-cache.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 230 python3 -m pytest tests/gpu/test_pallas_gpu.py -q -n 8 -rfE --tb=short -p no:cacheprovider --durations=10 \
    > $OUT/s29c3_pallas_gpu_tests.txt 2>&1
echo rc=$?; tail -25 $OUT/s29c3_pallas_gpu_tests.txt | cut -c1-200
