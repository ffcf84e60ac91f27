#!/usr/bin/env bash
# Session 14, H200 call 5 (issue 16), the session's last: the final tree (the block shrink's extra units for
# outputs up to 128 columns; call 4's expand prefetch reverted). The pallas GPU tests, then the compare of the
# prefill-8k and mixed cases, both ranks, both backends (the decode kernels are session 11's, unchanged).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call5.tar.gz r; }
trap pack EXIT
ls .pallas-cache | wc -l > $R/cache_entries.txt
timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 12 -rfE --tb=short -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/gpu_tests.txt 2>&1
timeout 200 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/compare.json \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' > $R/compare.txt 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" $R/gpu_tests.txt | cut -c1-200 | tail -8; tail -3 $R/compare.txt
