#!/usr/bin/env bash
# Session 30, issue 17: the rank-64 prefill / mixed buckets furthest from 85% of copy (session 29's record, s29f:
# shrink2 54-57%, shrink3 42-44%, expand 66-67%, expand_qkv 67-68%, expand_gate_up 73-74%) re-tuned on whichever
# card comes (the table is that card's), starting from its shipped table, with up to 150 candidates a bucket
# (the shipped H200 table timed 40 of them for shrink3 and kept the heuristic's plan). The rank-64 prefill /
# mixed compare (triton) before (shipped table) and after (the tuned table), same machine, same run.
# RANKS (default 64) and OPS (default shrink2,shrink3,expand,expand_qkv,expand_gate_up) widen the run.
# MAXC (default 150) caps the candidates timed per bucket (session 31).
# Usage (device tool): [REQUIRE=H200] [BUDGET=seconds] [MAXC=n] [RANKS=16,64] [OPS=...] bash benchmarks/probe_s30_tune_wide.sh [PREFIX]
set -u
P=${1:-s30t}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
# REQUIRE=H200: stop at once on another card (its table was re-tuned already)
[ -z "${REQUIRE:-}" ] || grep -q "$REQUIRE" <<< "$GPU" || { echo "not a $REQUIRE"; exit 3; }
T=$(PYTHONPATH=. python3 -c "import torch; from lora.triton import tiling; print(tiling.device_slug(torch.cuda.get_device_name()) + '.json')")
echo "table: $T"
[ -f lora/triton/tables/$T ] || { echo "no shipped table lora/triton/tables/$T"; exit 1; }
W=$(mktemp -d); R=$W/r; mkdir -p $R/tables
pack() { tar -C $W -czf $OUT/$P.tar.gz r; }
trap pack EXIT
cmp_cases() {  # label: the prefill / mixed compare of RANKS on the table in use
    local t0=$SECONDS
    PYTHONPATH=. timeout 150 python3 -m lora compare --quick --backends triton --no-progress $CASES --json $R/${P}_compare_$1.json \
        > $R/${P}_compare_$1.txt 2>&1
    echo "== compare $1 rc=$? $((SECONDS - t0)) s"; grep -E "triton" $R/${P}_compare_$1.txt | cut -c1-120 | tail -36
}
RANKS=${RANKS:-64}
OPS=${OPS:-shrink2,shrink3,expand,expand_qkv,expand_gate_up}
CASES=$(for r in ${RANKS//,/ }; do printf -- "--case llama3-8b-r%s-prefill-8k --case llama3-8b-r%s-mixed " $r $r; done)
cmp_cases shipped
export KERNELSTACK_TUNE_DIR=$R/tables
cp lora/triton/tables/$T $R/tables/$T
t0=$SECONDS
PYTHONPATH=. timeout $((${BUDGET:-300} + 60)) python3 -m lora tune --model llama3-8b --ranks $RANKS --regimes prefill,mixed \
    --ops $OPS --max-candidates ${MAXC:-150} --budget-s ${BUDGET:-300} \
    --out $R/tables/ --no-progress > $R/${P}_tune.txt 2>&1
echo "== tune rc=$? $((SECONDS - t0)) s"; grep -E "^\[" $R/${P}_tune.txt | cut -c1-220
cp $R/tables/$T $R/${P}_table.json
cmp_cases tuned
