#!/usr/bin/env bash
# Session 11, H200 call 3 (issue 16): call 2's tree plus the block shrink serving up to four of a block's
# adapters per K loop (blocks where short segments meet read their rows once) and the persistent expand
# giving the partial last block's tiles to the CTAs with a step less. The compare on every default
# case, both ranks, both backends; the pallas GPU tests; the decode step. Kernels lowered ahead on a CPU
# machine (benchmarks/pallas_prelower.py) come from the carried cache.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
ls .pallas-cache | wc -l > $R/cache_entries.txt
timeout 320 python3 -m lora compare --quick --backends triton,pallas --no-progress --json $R/compare.json \
    > $R/compare.txt 2>&1
timeout 130 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 8 -rfE -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/gpu_tests.txt 2>&1
timeout 120 python3 -m lora compare --step --quick --backends triton,pallas --no-progress --json $R/step.json \
    > $R/step.txt 2>&1
