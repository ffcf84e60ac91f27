#!/usr/bin/env bash
# Session 27, issue 16 (pallas decode): the one-CTA-per-tile decode expand with every adapter tile of an 8-adapter
# block in flight at once (Tuning(expand_stages=8), `pallas:es8`; `es6`: two tiles fetched in the loop) against the
# default four stages (three fetched ahead, then one a step: a round trip each), same run, every row checked
# against the float64 oracle first (benchmarks/decode_kernels.py, graph-batched us). Rank-64 stacked expands do
# not fit 8 stages (their rows say so); the gathering kernel (r64 decode-256 QKV) is not this pipeline.
# Usage (device tool, carry .pallas-cache; lowered ahead as probe_s26_full.sh says, plus
#   `... pallas_prelower.py --cases 'llama3-8b-*-decode-*' --ops expand,expand_qkv,expand_gate_up,qkv,gate_up --tunings es8`):
#   bash benchmarks/probe_s27_es8.sh [PREFIX]
set -u
P=${1:-s27e}
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
export XLA_PYTHON_CLIENT_PREALLOCATE=false
[ -d .pallas-cache ] && export KERNELSTACK_PALLAS_CACHE_DIR=$PWD/.pallas-cache
t0=$SECONDS
PYTHONPATH=.:benchmarks timeout 110 python3 benchmarks/decode_kernels.py --no-profile --budget-s 90 \
    --ops expand,expand_qkv,expand_gate_up,qkv,gate_up --backends triton,pallas,pallas:es6,pallas:es8 \
    --json $R/${P}_es8.json > $R/${P}_es8.txt 2>&1
echo "== es8 rc=$? $((SECONDS - t0)) s"; tail -n 45 $R/${P}_es8.txt | cut -c1-150
