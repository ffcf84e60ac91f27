#!/usr/bin/env bash
# Session 29, call 1 (main at the commit that adds this script): the whole GPU test suite, first run of the
# session-27 pallas edit (expand_kernel.one_tile loads the slot list with the adapter count) under
# tests/gpu/test_pallas_gpu.py and the contract / graph-safety tests. Carry .pallas-cache (probe_s26_full.sh's).
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
t0=$SECONDS
timeout 420 python3 -m pytest tests/gpu -q -n 12 -rfE --tb=short -p no:cacheprovider --durations=15 \
    > $OUT/s29c1_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/s29c1_gpu_tests.txt | cut -c1-200 | tail -12
