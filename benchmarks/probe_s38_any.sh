#!/usr/bin/env bash
# Session 38, one device call, any card. On an H200: issue 17's geometry tune of the H200 table
# (benchmarks/probe_s35_h200.sh; carry .peers/src and .peers/site). On another card: issue 16's decode step
# (`python -m lora compare --step --quick --backends triton,pallas`: every LoRA op of 32 Llama-3-8B layers as one
# CUDA graph, both ranks, 64 and 256 tokens), whose pallas / triton ratio the issue asks to be within 1.3x, after
# this session's decode expand changes (the tiled tile for full blocks, two B tiles in flight where two gathering
# CTAs then share an SM). Carry .pallas-cache, lowered first (about 4 minutes on 2 cores):
#   JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache PYTHONPATH=.:benchmarks .venv-jax/bin/python \
#     benchmarks/pallas_prelower.py --cases 'llama3-8b-*-decode-*' \
#     --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,expand_gate_up,qkv,gate_up
# Usage (device tool): bash benchmarks/probe_s38_any.sh [PREFIX]
set -u
P=${1:-s38a}
source benchmarks/probe_preamble.sh
if echo "$GPU" | grep -q H200; then
    bash benchmarks/probe_s35_h200.sh
    exit
fi
t0=$SECONDS
PYTHONPATH=. timeout ${STEP_S:-200} python3 -m lora compare --step --quick --backends triton,pallas --no-progress \
    --json $OUT/${P}_step.json > $OUT/${P}_step.txt 2>&1
echo "== step rc=$? $((SECONDS - t0)) s"; tail -n 30 $OUT/${P}_step.txt | cut -c1-160
