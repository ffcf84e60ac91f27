#!/usr/bin/env bash
# Session 35, issue 17: the rank-16 gate-up expand buckets (both geometries; 1.01x SGLang triton_v2 on the H100 at
# 94-95% of copy) re-tuned over every expand candidate (--max-candidates 200: all of them) from the table of
# probe_s35_any.sh, then triton beside triton_v2 on those rows. Needs .peers/src and .peers/site carried.
# Usage (device tool): bash benchmarks/probe_s35_expand.sh [PREFIX]
set -u
P=${1:-s35e}
T=nvidia-h100-80gb-hbm3.json
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p $OUT/tables && cp benchmarks/results/h100/s35/tables/$T $OUT/tables/$T
t0=$SECONDS
PYTHONPATH=. KERNELSTACK_TUNE_DIR=$OUT/tables timeout 260 python3 -m lora tune --model llama3-8b --ranks 16 \
    --regimes prefill,mixed --ops expand_gate_up --max-candidates 200 --budget-s 180 --out $OUT/tables/ \
    --no-progress > $OUT/${P}_tune.txt 2>&1
echo "== tune rc=$? $((SECONDS - t0)) s"; grep -E "^\[|tuned" $OUT/${P}_tune.txt | cut -c1-260
export KERNELSTACK_TUNE_DIR=$OUT/tables
PYTHONPATH=. timeout 150 python3 benchmarks/peers/run.py compare --quick --no-progress --case llama3-8b-r16-prefill-8k \
    --case llama3-8b-r16-mixed --ops expand_gate_up,gate_up --backends triton,peer-sglang-v2 \
    --json $OUT/${P}_peers.json > $OUT/${P}_peers.txt 2>&1
echo "== peers rc=$?"; python3 benchmarks/peers/report.py $OUT/${P}_peers.json > $OUT/${P}_peers.md; tail -8 $OUT/${P}_peers.md
