#!/usr/bin/env bash
# Session 18, H200 call 5 (issue 16): a K-split block shrink's partial tiles summed by CTAs of a whole block
# (64 rows, up to 64 columns) instead of 8 x 16 pieces. The pallas GPU tests; the down projections and the
# rank-16 QKV-sized shrinks (default, and split in two along K: ks2st3 / ks2st4) with the per-kernel split;
# then the compare on the prefill-8k and mixed cases, both ranks, both backends.
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
PYTHONPATH=. timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py \
    tests/gpu/test_graph_safety.py tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider \
    -k "pallas and not test_real_shapes" > $OUT/s18c5_gpu_tests.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/s18c5_gpu_tests.txt | cut -c1-200 | tail -8
(cd benchmarks && PYTHONPATH=.. timeout 150 python3 decode_kernels.py \
    --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed,llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed \
    --ops shrink_down --backends triton,pallas --json $OUT/s18c5_shrink_down.json > $OUT/s18c5_shrink_down.txt 2>&1
 PYTHONPATH=.. timeout 150 python3 decode_kernels.py --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed \
    --ops shrink1,shrink2,shrink3 --backends triton,pallas,pallas:ks2st3,pallas:ks2st4 \
    --json $OUT/s18c5_r16_shrinks.json > $OUT/s18c5_r16_shrinks.txt 2>&1)
grep "\] llama" $OUT/s18c5_shrink_down.txt $OUT/s18c5_r16_shrinks.txt | cut -d: -f2- | cut -c1-110
PYTHONPATH=. timeout 300 python3 -m lora compare --quick --backends triton,pallas --no-progress \
    --json $OUT/s18c5_compare.json --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' \
    > $OUT/s18c5_compare.txt 2>&1
grep -c "pass " $OUT/s18c5_compare.txt
