#!/usr/bin/env bash
# Session 16, H200 call 6 (issue 17): the prefill / mixed expands with base_output as the dot's accumulator
# (ExpandPlan.acc_base), against the shipped plans; calls 4-5 (benchmarks/expand_floor.py) found it 10% faster
# on a dense rank-64 batch with 64 x 128 tiles. Plans forced one by one (benchmarks/plan_probe.py).
set -u
export PYTHONPATH=.
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call6.tar.gz r; }
trap pack EXIT
probe() {  # name cases op limit plans...
    local name=$1 cases=$2 op=$3 limit=$4; shift 4
    local args=(); for p in "$@"; do args+=(--plan "$p"); done
    timeout $limit python3 benchmarks/plan_probe.py --cases $cases --op $op --sets 4 --json $R/$name.json "${args[@]}" \
        > $R/$name.txt 2>&1
    echo "== $name"; grep -v "^$" $R/$name.txt | tail -n 40
}
C16=llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed
C64=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
R64=(table "ExpandPlan(64, 64, 1, 4, 2, acc_base=True)" "ExpandPlan(64, 128, 1, 4, 2)"
     "ExpandPlan(64, 128, 1, 4, 2, acc_base=True)" "ExpandPlan(32, 128, 1, 4, 2, acc_base=True)"
     "ExpandPlan(128, 64, 1, 4, 2, acc_base=True)" "ExpandPlan(128, 128, 1, 8, 2, acc_base=True)")
probe r64_expand $C64 expand,expand_qkv 170 "${R64[@]}"
probe r64_gate_up_expand $C64 expand_gate_up 130 table "ExpandPlan(128, 64, 16, 4, 3, acc_base=True)" \
    "ExpandPlan(64, 128, 1, 4, 2, acc_base=True)" "ExpandPlan(64, 128, 4, 4, 3, acc_base=True)"
probe r16_expand $C16 expand,expand_qkv 90 table "ExpandPlan(32, 128, 1, 4, 2, acc_base=True)" \
    "ExpandPlan(64, 128, 1, 4, 2, acc_base=True)"
