#!/usr/bin/env bash
# Session 8, H200 call 1: the decode expand that gathers one adapter's rows per CTA (ExpandConfig.gather) -- the
# pallas GPU contract / graph tests, then each decode expand and fused op kernel by kernel against session 7's
# kernel (pallas:nogather) and triton; and session 7's unrun call 5: the capture probe in global mode with a
# garbage collection inside each capture, now that the torch path keeps JAX to its CPU backend.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
timeout 150 python3 -m pytest tests/gpu/test_contract_gpu.py tests/gpu/test_pallas_gpu.py tests/gpu/test_graph_safety.py \
    tests/gpu/test_graphs.py -q -n 8 -rfE -p no:cacheprovider -k "pallas and not test_real_shapes" \
    > $R/gpu_tests.txt 2>&1
timeout 200 python3 benchmarks/decode_kernels.py --budget-s 185 --ops expand,expand_qkv,expand_gate_up,qkv,gate_up \
    --backends pallas,pallas:nogather,triton --json $R/decode_kernels.json > $R/decode_kernels.txt 2>&1
timeout 45 python3 benchmarks/capture_probe.py --case llama3-8b-r64-decode-256 --op qkv --captures 300 \
    --modes global+gc,global --json $R/capture_pallas.json > $R/capture_pallas.txt 2>&1
timeout 30 python3 benchmarks/capture_probe.py --case llama3-8b-r64-decode-256 --op qkv --captures 300 \
    --backend triton --modes global+gc --json $R/capture_triton.json > $R/capture_triton.txt 2>&1
