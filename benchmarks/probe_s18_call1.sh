#!/usr/bin/env bash
# Session 18, H200 call 1 (issue 16): the persistent expand fetches a segment boundary's second adapter
# (x window and B tile) while the first adapter's product computes, instead of after it. The pallas GPU
# tests, then the compare on the prefill-8k and mixed cases, both ranks, both backends. Kernels
# lowered ahead on a CPU (benchmarks/pallas_prelower.py).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $OUT/s18c1_gpu_tests.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/s18c1_gpu_tests.txt | cut -c1-200 | tail -8
timeout 230 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $OUT/s18c1_compare.json \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' > $OUT/s18c1_compare.txt 2>&1
tail -n 3 $OUT/s18c1_compare.txt
