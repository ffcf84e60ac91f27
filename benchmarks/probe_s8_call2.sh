#!/usr/bin/env bash
# Session 8, H200 call 2: the decode expand's gathering CTAs now walk a group of column tiles (x rows gathered
# once) and add each tile to base by per-row TMA reduce-adds (call 1's kernel: one tile per CTA, base rows gathered
# and stored back: slower than session 7's kernel except rank-64 stacked bf16). GPU tests, then the decode ops
# kernel by kernel against session 7's kernel (pallas:nogather) and triton, and the tile-group size on gate-up.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
timeout 120 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 8 -rfE -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/gpu_tests.txt 2>&1
timeout 230 python3 benchmarks/decode_kernels.py --budget-s 215 --ops expand,expand_qkv,expand_gate_up,qkv,gate_up \
    --backends pallas,pallas:nogather,triton --json $R/decode_kernels.json > $R/decode_kernels.txt 2>&1
timeout 60 python3 benchmarks/decode_kernels.py --budget-s 50 --ops expand_gate_up --no-profile \
    --cases llama3-8b-r16-decode-64,llama3-8b-r64-decode-256 --backends pallas:gt1,pallas:gt2,pallas:gt8 \
    --json $R/decode_tiles.json > $R/decode_tiles.txt 2>&1
