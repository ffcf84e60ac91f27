#!/usr/bin/env bash
# Session 17, H200 call 4 (issue 16): the session's pallas changes together: the persistent expand on two CTAs
# per SM, the K-split down-projection shrink on two CTAs per SM (four stages), and the partial-tile sum that
# writes rows < s only (a partial last block placed by the kernel: no copies after it). The pallas GPU tests,
# then the compare on every default case, both ranks, both backends. Kernels lowered ahead on a CPU.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $OUT/s17c4_gpu_tests.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/s17c4_gpu_tests.txt | cut -c1-200 | tail -8
timeout 230 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $OUT/s17c4_compare.json \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' > $OUT/s17c4_compare.txt 2>&1
tail -n 3 $OUT/s17c4_compare.txt
timeout 170 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $OUT/s17c4_compare_decode.json \
    --case 'llama3-8b-r*-decode-*' > $OUT/s17c4_compare_decode.txt 2>&1
tail -n 3 $OUT/s17c4_compare_decode.txt
