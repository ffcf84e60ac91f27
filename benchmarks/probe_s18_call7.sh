#!/usr/bin/env bash
# Session 18, H200 call 7 (issue 16): the persistent expand prefetches a block's second adapter (slot from
# the ring, tiles fetched while the step before computes). The pallas GPU tests, then the compare on
# the prefill-8k and mixed cases, both ranks, both backends, for the ops with an expand (the shrinks are
# unchanged since call 5).
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache PYTHONPATH=.
timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $OUT/s18c7_gpu_tests.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/s18c7_gpu_tests.txt | cut -c1-200 | tail -8
timeout 200 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $OUT/s18c7_compare.json \
    --ops expand,expand_qkv,expand_gate_up,qkv,gate_up --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' \
    > $OUT/s18c7_compare.txt 2>&1
grep "\] llama" $OUT/s18c7_compare.txt | cut -c1-100
