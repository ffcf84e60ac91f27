#!/usr/bin/env bash
# Session 29, call 4 (run as one command line on the warm H200, in the device's copy of the tree): the pallas
# expand GPU tests with benchmarks/probe_s29/c2_xregs.patch applied in place (the decode expand's x operand
# from registers). Cut by its 170 s timeout with 2 failures among the first 49 tests; the summary of which
# tests failed was not written before the cut. Carry .pallas-cache.
patch -s -p1 < benchmarks/probe_s29/c2_xregs.patch && git diff --stat
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
timeout 170 python3 -m pytest tests/gpu/test_pallas_gpu.py tests/gpu/test_contract_gpu.py tests/gpu/test_graph_safety.py \
    -q -n 8 -rfE --tb=short -p no:cacheprovider -k "pallas and expand or test_pallas_gpu and expand" \
    > $OUT/s29c4_xregs_gpu_tests.txt 2>&1
echo rc=$?; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/s29c4_xregs_gpu_tests.txt | cut -c1-200 | tail
