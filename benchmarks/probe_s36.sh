#!/usr/bin/env bash
# Session 36, one device call. Issue 16, on any card: the batched decode expand (Tuning(expand_batched=True),
# backend pallas:batched: every slot's tiles of a block fetched at once, the products issued back to back) beside
# the default pallas (a pipeline step per adapter) and triton, on every decode case: each row checked against the
# float64 oracle, then timed graph-batched (benchmarks/decode_kernels.py); its GPU tests first. Then where the
# decode shrinks' time goes (below). About 9 minutes; on an H200, issue 17's probe_s35_h200.sh is the next call.
# Before the call, lower the decode kernels into the cache the call carries (about 5 minutes on 2 cores):
#   for t in "" "--tunings batched"; do JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache \
#     PYTHONPATH=.:benchmarks .venv-jax/bin/python benchmarks/pallas_prelower.py --cases 'llama3-8b-*-decode-*' \
#     --ops expand,expand_qkv,expand_gate_up,qkv,gate_up $t; done
# Usage (device tool, carry .pallas-cache): bash benchmarks/probe_s36.sh [PREFIX]
# STEPS picks the parts to run (default: all four, about 9 minutes), e.g. STEPS="batched splits" when little
# device time is left.
set -u
P=${1:-s36}
want() { [[ " ${STEPS:-tests batched fused splits} " == *" $1 "* ]]; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache && echo "pallas cache: $(ls .pallas-cache | wc -l) files"
if want tests; then
t0=$SECONDS
PYTHONPATH=. timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_pallas_gpu.py -k batched_decode_expand \
    > $OUT/${P}_gpu_tests.txt 2>&1
echo "== gpu tests rc=$? $((SECONDS - t0)) s"; tail -n 5 $OUT/${P}_gpu_tests.txt | cut -c1-200
fi
if want batched; then
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout ${BATCHED_S:-170} python3 benchmarks/decode_kernels.py --no-profile --budget-s $(( ${BATCHED_S:-170} - 30 )) \
    --ops expand,expand_qkv,expand_gate_up,qkv,gate_up --backends triton,pallas,pallas:batched \
    --json $OUT/${P}_batched.json > $OUT/${P}_batched.txt 2>&1
echo "== batched rc=$? $((SECONDS - t0)) s"; tail -n 70 $OUT/${P}_batched.txt | cut -c1-160
fi
# Where the decode fused ops' time goes (pallas's split shrink, its partial-tile sum, the expand), kernel by
# kernel under the profiler; then the stacked decode shrinks at 256 tokens under other K splits (ks4, ks2) and
# as the K-split block variant (blk16, blk8: one partial tile per block and split instead of per adapter). (Session
# 37 ran its batched and splits steps, with a since-reverted pallas:rp; benchmarks/results/h200/README.md.) The
# split shrink's stacked rows are 1.8-2.0x triton's at 256 tokens (session 29) and 1.26-1.32x at 64. (Lower
# them ahead too: pallas_prelower.py --cases 'llama3-8b-r*-decode-256' --ops shrink2,shrink3 --tunings ks4,ks2,blk16,blk8)
if want fused; then
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout 100 python3 benchmarks/decode_kernels.py --budget-s 75 \
    --cases llama3-8b-r64-decode-256,llama3-8b-r16-decode-256 --ops qkv,gate_up --backends triton,pallas \
    --json $OUT/${P}_fused_kernels.json > $OUT/${P}_fused_kernels.txt 2>&1
echo "== fused kernels rc=$? $((SECONDS - t0)) s"; grep -E "us  kernels|budget" $OUT/${P}_fused_kernels.txt | cut -c1-160
fi
if want splits; then
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout 130 python3 benchmarks/decode_kernels.py --budget-s 105 \
    --cases llama3-8b-r64-decode-256,llama3-8b-r16-decode-256 --ops shrink3,shrink2 \
    --backends triton,pallas,pallas:ks4,pallas:ks2,pallas:blk16,pallas:blk8 \
    --json $OUT/${P}_shrink_splits.json > $OUT/${P}_shrink_splits.txt 2>&1
echo "== shrink splits rc=$? $((SECONDS - t0)) s"; grep -E "us  kernels|budget" $OUT/${P}_shrink_splits.txt | cut -c1-160
fi
