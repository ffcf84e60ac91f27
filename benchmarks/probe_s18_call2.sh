#!/usr/bin/env bash
# Session 18, H200 call 2 (issue 16): expand shared memory counted as Mosaic allocates it, so the rank-64
# stacked prefill expands (QKV, gate-up) run on two CTAs per SM with 64-wide tiles, three in flight (before:
# one CTA per SM, 128-wide tiles, four in flight). The pallas GPU tests; the rank-64 stacked ops with the
# new plan and the old one (pallas:c132bn128ss4) side by side; then the compare on the prefill-8k
# and mixed cases, both ranks, both backends. Kernels lowered ahead on a CPU (benchmarks/pallas_prelower.py).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $OUT/s18c2_gpu_tests.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/s18c2_gpu_tests.txt | cut -c1-200 | tail -8
(cd benchmarks && PYTHONPATH=.. timeout 120 python3 decode_kernels.py --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed \
    --ops expand_qkv,expand_gate_up,qkv,gate_up --backends triton,pallas,pallas:c132bn128ss4 --no-profile \
    --json $OUT/s18c2_r64_stacked.json > $OUT/s18c2_r64_stacked.txt 2>&1)
cat $OUT/s18c2_r64_stacked.txt | cut -c1-120
timeout 300 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $OUT/s18c2_compare.json \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' > $OUT/s18c2_compare.txt 2>&1
grep -c pass $OUT/s18c2_compare.txt
