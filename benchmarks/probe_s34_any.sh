#!/usr/bin/env bash
# Session 34: an H200 runs the peer comparison there (probe_s34_peers.sh: triton beside SGLang 0.5.23 and vLLM
# 0.33.0, every default Llama-3-8B case, both ranks); another card runs the triton GPU tests that read the plan
# tables (the H100 table re-tuned this session) and the GPU contract for triton.
# Usage (device tool, carry .peers/src .peers/site): bash benchmarks/probe_s34_any.sh [SECONDS_PER_RANK]
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader)
if grep -q H200 <<< "$GPU"; then bash benchmarks/probe_s34_peers.sh s34h "${1:-270}"; exit; fi
echo "$GPU: the triton GPU tests"
PYTHONPATH=. timeout 300 python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_triton_tuned.py \
    tests/gpu/test_contract_gpu.py -k "triton" 2>&1 | tail -4 | tee $OUT/s34g_gpu_tests.txt
