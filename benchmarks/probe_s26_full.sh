#!/usr/bin/env bash
# Session 26, on the H200, after probe_s25_tune.sh (the decode buckets re-tuned): the record both issues ask for at
# the current head, in one run: `python -m lora compare` on every default case (--quick), both ranks, triton and pallas,
# then the decode step of both; issue 17's target table and issue 16's pallas/triton ratios read from the JSON.
# With TABLE=path, that table is the user's (the tuned one under test); without, the shipped table.
# Usage (device tool, carry .pallas-cache): [TABLE=benchmarks/results/h200/s26t_table.json] bash benchmarks/probe_s26_full.sh [PREFIX]
# Before the call, lower the pallas kernels of every default case on the CPU (102 configurations, about 7 minutes on
# two cores; the persistent expands take 10-30 s each) into the cache the call carries:
#   JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=.pallas-cache PYTHONPATH=.:benchmarks .venv-jax/bin/python \
#     benchmarks/pallas_prelower.py --cases 'llama3-8b-*' \
#     --ops shrink1,shrink2,shrink3,shrink_down,expand,expand_qkv,expand_gate_up,qkv,gate_up
set -u
P=${1:-s26f}
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
nvidia-smi --query-gpu=name --format=csv,noheader
export XLA_PYTHON_CLIENT_PREALLOCATE=false
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache && echo "pallas cache: $(ls .pallas-cache | wc -l) files"
if [ -n "${TABLE:-}" ]; then
    export KERNELSTACK_TUNE_DIR=$R/tables
    T=$(PYTHONPATH=. python3 -c "import torch; from lora.triton import tiling; print(tiling.device_slug(torch.cuda.get_device_name()) + '.json')")
    cp "$TABLE" $R/tables/$T; echo "user table: $TABLE as $T"
fi
t0=$SECONDS
PYTHONPATH=. timeout 400 python3 -m lora compare --quick --backends triton,pallas --no-progress \
    --json $R/${P}_compare.json > $R/${P}_compare.txt 2>&1
echo "== compare rc=$? $((SECONDS - t0)) s"; grep -cE "pass" $R/${P}_compare.txt; grep -E "FAIL|fail|rror" $R/${P}_compare.txt | head -5
t0=$SECONDS
PYTHONPATH=. timeout 120 python3 -m lora compare --step --quick --backends triton,pallas --no-progress \
    --json $R/${P}_step.json > $R/${P}_step.txt 2>&1
echo "== step rc=$? $((SECONDS - t0)) s"; grep -E "step-" $R/${P}_step.txt | cut -c1-130 | tail -8
python3 benchmarks/issue17_targets.py $R/${P}_compare.json > $R/${P}_issue17.md 2>&1; tail -n 3 $R/${P}_issue17.md
python3 benchmarks/pallas_before_after.py $R/${P}_compare.json $R/${P}_compare.json > $R/${P}_issue16.md 2>&1; tail -n 3 $R/${P}_issue16.md
