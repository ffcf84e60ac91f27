#!/usr/bin/env bash
# Issue 16: the first GPU run of the two-block, warp-specialized pallas shrink (Tuning(shrink_wide=True),
# ShrinkConfig.wide), built in session 21 without a GPU: checked in Mosaic GPU interpret mode and by its
# Mosaic lowering only. One device call (under 10 minutes; each step stops starting new work at its budget):
#   1. the pallas GPU contract (every shrink and fused op, three dtypes, five compositions) and the CUDA-graph
#      tests (capture once, replay with new metadata; their prefill case is 1024 rows) under it
#      (LORA_PALLAS_TUNING=wide: tests/gpu/conftest.py; decode-sized batches never take it);
#   2. the rank-64 shrinks on one 8448-row segment and on two segments meeting inside a block (session 20,
#      call 3's shapes: the kernel's own speed, and what a boundary costs it) against triton and the default;
#   3. the rank-16 / rank-64 prefill-8k and mixed shrinks and the fused ops that run them, against triton and
#      the default pallas plans: benchmarks/decode_kernels.py (each op checked against the float64 oracle,
#      then timed one call among many in a CUDA graph) with pallas:wide (K split 2), pallas:wide4 (split 4).
# Before the call, lower the kernels on the CPU into the cache the call carries (the persistent expands of
# the fused ops take about a minute each to lower; the shrinks seconds):
#   JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=.pallas-cache PYTHONPATH=.:benchmarks .venv-jax/bin/python \
#     benchmarks/pallas_prelower.py --cases 'llama3-8b-r*-prefill-8k,llama3-8b-r*-mixed' \
#     --ops shrink1,shrink2,shrink3,shrink_down,qkv,gate_up --tunings wide,wide4
# (the dense / inside shapes of step 2 are not named cases: their shrinks lower on the device, seconds each)
# Usage (device tool, carry .pallas-cache): bash benchmarks/wide_shrink_check.sh s22c1  (prefix of the files)
set -u
P=${1:-wide}
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
XDIST=$(python3 -c 'import xdist' 2>/dev/null && echo "-n 8")  # pytest-xdist where the machine has it
LORA_GPU_BACKENDS=pallas LORA_PALLAS_TUNING=wide PYTHONPATH=. timeout 180 python3 -m pytest -q -p no:cacheprovider $XDIST \
    tests/gpu/test_contract_gpu.py tests/gpu/test_graphs.py -k "pallas and (shrink or qkv or gate_up) and not expand" \
    > $R/${P}_gpu_tests.txt 2>&1
tail -3 $R/${P}_gpu_tests.txt
PYTHONPATH=.:benchmarks timeout 100 python3 benchmarks/decode_kernels.py --no-profile --budget-s 90 --cases '' \
    --shape 'r=64,segs=prefill:8448/1,name=dense-r64' --shape 'r=64,segs=lens:4100+4348,name=inside-r64' \
    --ops shrink1,shrink2,shrink3,shrink_down --backends triton,pallas,pallas:wide \
    --json $R/${P}_dense.json > $R/${P}_dense.txt 2>&1
grep "\] " $R/${P}_dense.txt | cut -c1-100
PYTHONPATH=.:benchmarks timeout 250 python3 benchmarks/decode_kernels.py --no-profile --budget-s 235 \
    --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed,llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed \
    --ops shrink1,shrink2,shrink3,shrink_down,qkv,gate_up --backends triton,pallas,pallas:wide,pallas:wide4 \
    --json $R/${P}_wide.json > $R/${P}_wide.txt 2>&1
grep "\] llama" $R/${P}_wide.txt | cut -c1-100
