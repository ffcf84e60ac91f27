#!/usr/bin/env bash
# Session 42 (issue 16, any card): what a decode kernel's time owes to the adapters a 64-row block holds. The same
# decode batches (r16, 64 and 256 tokens) with 1, 2, 4 and 8 loaded adapters, so each block holds that many; triton
# and pallas, graph-batched us and the kernels one call launches (benchmarks/decode_kernels.py). Never measured
# before: session 38 found a one-adapter-step CTA of the pallas decode expand at about 5 us (triton's whole
# expand: 2.2) and guessed the CTA's fixed chain, not its adapter steps, is the floor. If pallas grows with the
# adapter count far more than triton does, the adapter loop is worth removing (one wgmma over the block's stacked
# adapters: K = adapters x rank, x laid out by the split shrink's sum kernel, B rows by TMA per adapter).
# Then the yardstick for that design: the decode expands as cuBLAS GEMMs over the stacked adapters
# (benchmarks/stacked_dense.py; the operands' layout is checked on the CPU by tests/lora/test_stacked_dense.py).
# Before the call, lower the kernels into the carried cache (about 2 minutes on two cores):
#   for a in 1 2 4 8; do for t in 64 256; do S+=(--shape "adapters=$a,segs=decode:$t,name=a$a-r16-d$t"); done; done
#   JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache PYTHONPATH=.:benchmarks .venv-jax/bin/python \
#     benchmarks/pallas_prelower.py --cases '' "${S[@]}" --ops expand,expand_gate_up,shrink1,qkv,gate_up
# Usage (device tool, carry .pallas-cache): bash benchmarks/probe_s42_adapters.sh [PREFIX]
set -u
P=${1:-s42a}
nvidia-smi --query-gpu=name --format=csv,noheader
export XLA_PYTHON_CLIENT_PREALLOCATE=false
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache && echo "pallas cache: $(ls .pallas-cache | wc -l) files"
S=()
for t in 64 256; do for a in 1 2 4 8; do S+=(--shape "adapters=$a,segs=decode:$t,name=a$a-r16-d$t"); done; done
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout ${BUDGET_S:-360} python3 benchmarks/decode_kernels.py --cases '' "${S[@]}" \
    --ops expand,expand_gate_up,shrink1,qkv,gate_up --backends triton,pallas --budget-s $((${BUDGET_S:-360} - 60)) \
    --json $OUT/${P}_adapters.json > $OUT/${P}_adapters.txt 2>&1
echo "== adapters rc=$? $((SECONDS - t0)) s"; tail -n 45 $OUT/${P}_adapters.txt | cut -c1-150
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout 120 python3 benchmarks/stacked_dense.py --json $OUT/${P}_stacked_dense.json \
    > $OUT/${P}_stacked_dense.txt 2>&1
echo "== stacked dense rc=$? $((SECONDS - t0)) s"; cat $OUT/${P}_stacked_dense.txt | cut -c1-150
