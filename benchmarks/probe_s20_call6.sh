#!/usr/bin/env bash
# Session 20, H200 call 6 (issue 16): the K-split block shrink with two blocks a CTA (ShrinkConfig.wide, the
# heuristic's choice for the rank-64 down projection): the GPU contract on it (K = 14336, every dtype and
# composition of tests/gpu/test_contract_gpu.py), then shrink_down timed against triton and against the same
# kernel one block a CTA (pallas:nowide), prefill-8k and mixed, both ranks (rank 16 is not wide: a control);
# and two blocks a CTA asked for on the rank-64 QKV-sized shrinks (pallas:ks2wide, 128 columns: one adapter a K loop).
# It ran on the tree with the change applied (then at main's lora/); the change was reverted after this call
# and is kept as benchmarks/probe_s20/c6_wide.patch: to rerun, apply it first (patch -p1 < that file).
set -u
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/s20c6.tar.gz r; }
trap pack EXIT
LORA_GPU_BACKENDS=pallas PYTHONPATH=. timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_contract_gpu.py \
    -k "pallas and shrink_down" > $R/s20c6_gpu_tests.txt 2>&1
tail -3 $R/s20c6_gpu_tests.txt
PYTHONPATH=.:benchmarks timeout 250 python3 benchmarks/decode_kernels.py --no-profile --budget-s 240 \
    --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed,llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed \
    --ops shrink_down --backends triton,pallas,pallas:nowide --json $R/s20c6_shrink_down.json > $R/s20c6_shrink_down.txt 2>&1
grep "\] llama" $R/s20c6_shrink_down.txt | cut -c1-100
PYTHONPATH=.:benchmarks timeout 120 python3 benchmarks/decode_kernels.py --no-profile --budget-s 110 \
    --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed --ops shrink1,shrink2 --backends pallas,pallas:ks2wide \
    --json $R/s20c6_ks2wide.json > $R/s20c6_ks2wide.txt 2>&1
grep "\] llama" $R/s20c6_ks2wide.txt | cut -c1-100
