#!/usr/bin/env bash
# Session 23, H200 call 3 (issue 17, decode): main has each group's rows at a fixed place of row_order (call 2:
# decode ops 1-20% faster, but the rank-16 64-token gate-up expand 26% slower with the shipped table's plan,
# which was measured on the old kernel). Re-tune the decode expand buckets and the decode qkv / gate_up pairs
# on main, starting from the shipped table (other entries kept), then the decode compare and the decode step
# with that table as the user's table.
# Usage (device tool): bash benchmarks/probe_s23_call3.sh
set -u
P=s23c3
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
export KERNELSTACK_TUNE_DIR=$R/tables
cp lora/triton/tables/nvidia-h200.json $R/tables/nvidia-h200.json
t0=$SECONDS
PYTHONPATH=. timeout 330 python3 -m lora tune --model llama3-8b --ranks 16,64 --regimes decode \
    --ops expand,expand_qkv,expand_gate_up,qkv,gate_up --budget-s 260 --out $R/tables/ --no-progress > $R/${P}_tune.txt 2>&1
echo "== tune rc=$? $((SECONDS - t0)) s"; tail -4 $R/${P}_tune.txt | cut -c1-200
t0=$SECONDS
PYTHONPATH=. timeout 100 python3 -m lora compare --quick --backends triton --no-progress \
    --case 'llama3-8b-r*-decode-*' --json $R/${P}_decode.json > $R/${P}_decode.txt 2>&1
echo "== decode rc=$? $((SECONDS - t0)) s"; tail -n 2 $R/${P}_decode.txt | cut -c1-160
t0=$SECONDS
PYTHONPATH=. timeout 60 python3 -m lora compare --step --quick --backends triton --no-progress \
    --json $R/${P}_step.json > $R/${P}_step.txt 2>&1
echo "== step rc=$? $((SECONDS - t0)) s"; grep -E "step-" $R/${P}_step.txt | cut -c1-130 | tail -8
