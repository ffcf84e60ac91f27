#!/usr/bin/env bash
# Session 38, one device call. Issue 16, on any card: the decode expand with a CTA per tile and adapter of
# its block (Tuning(expand_per_adapter=True), backend pallas:perAdapter: each CTA runs one adapter's product
# and adds its update tile to base by TMA reduce-add, instead of one CTA running the block's adapters one
# after another, whose chain of instructions session 29's profile found the decode expand waits on) beside
# the default pallas and triton on every decode case: its GPU tests first, then each row checked against the
# float64 oracle and timed graph-batched (benchmarks/decode_kernels.py). Then (step fused) where the decode
# fused ops' time goes, kernel by kernel. About 6 minutes.
# Before the call, lower the decode kernels into the cache the call carries (about 5 minutes on 2 cores):
#   for t in "" "--tunings perAdapter"; do JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache \
#     PYTHONPATH=.:benchmarks .venv-jax/bin/python benchmarks/pallas_prelower.py --cases 'llama3-8b-*-decode-*' \
#     --ops expand,expand_qkv,expand_gate_up,qkv,gate_up $t; done
# Usage (device tool, carry .pallas-cache): bash benchmarks/probe_s38.sh [PREFIX]. Ran once (session 38, an H100:
# benchmarks/results/h100/s38/); the trial was then dropped: git apply benchmarks/probe_s38/per_adapter.patch first.
# STEPS picks the parts to run (default "tests adapters fused").
# Decision rule, written before the call: pallas:perAdapter becomes the default decode expand where it is
# faster than the default on every row of its kind (plain expands; stacked expands), else it is dropped.
set -u
P=${1:-s38}
DEFAULT_STEPS="tests adapters fused"
source benchmarks/probe_preamble.sh
if want tests; then
t0=$SECONDS
PYTHONPATH=. timeout ${TESTS_S:-120} python3 -m pytest -q -p no:cacheprovider tests/gpu/test_pallas_gpu.py \
    -k "per_adapter_decode_expand" > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; tail -n 5 $OUT/${P}_gpu_tests.txt | cut -c1-200
fi
if want adapters; then
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout ${ADAPTERS_S:-200} python3 benchmarks/decode_kernels.py --no-profile \
    --budget-s $(( ${ADAPTERS_S:-200} - 30 )) --ops expand,expand_qkv,expand_gate_up,qkv,gate_up \
    --backends triton,pallas,pallas:perAdapter --json $OUT/${P}_adapters.json > $OUT/${P}_adapters.txt 2>&1
echo "== per adapter rc=$? $((SECONDS - t0)) s"; tail -n 70 $OUT/${P}_adapters.txt | cut -c1-160
fi
if want fused; then
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout 100 python3 benchmarks/decode_kernels.py --budget-s 75 \
    --cases llama3-8b-r64-decode-256,llama3-8b-r16-decode-256 --ops qkv,gate_up --backends triton,pallas \
    --json $OUT/${P}_fused_kernels.json > $OUT/${P}_fused_kernels.txt 2>&1
echo "== fused kernels rc=$? $((SECONDS - t0)) s"; grep -E "us  kernels|budget" $OUT/${P}_fused_kernels.txt | cut -c1-160
fi
