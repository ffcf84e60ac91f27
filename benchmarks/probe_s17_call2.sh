#!/usr/bin/env bash
# Session 17, H200 call 2 (issue 16): the persistent expand on two CTAs per SM by default (call 1's c264 / c264bn64,
# now the heuristic's pick where three tiles in flight fit each). The pallas GPU tests, then the compare on
# the prefill-8k and mixed cases, both ranks, both backends. Kernels lowered ahead on a CPU machine.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
timeout 170 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $OUT/s17c2_gpu_tests.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/s17c2_gpu_tests.txt | cut -c1-200 | tail -8
timeout 390 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $OUT/s17c2_compare.json \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' > $OUT/s17c2_compare.txt 2>&1
tail -n 3 $OUT/s17c2_compare.txt
