#!/usr/bin/env bash
# Session 16, H200 call 1 (issue 17): the prefill / mixed shrinks with deeper K pipelines than the tuner's grid
# holds (4 stages at most at BLOCK_K 128): does more x in flight per program lift the r16 shrinks (79-82% of
# copy) and the r64 one-slice shrink (71-76%)? Plans forced one by one (benchmarks/plan_probe.py).
set -u
export PYTHONPATH=.
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call1.tar.gz r; }
trap pack EXIT
C16=llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed
C64=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
probe() {  # name cases op limit plans...
    local name=$1 cases=$2 op=$3 limit=$4; shift 4
    local args=(); for p in "$@"; do args+=(--plan "$p"); done
    timeout $limit python3 benchmarks/plan_probe.py --cases $cases --op $op --sets 4 --json $R/$name.json "${args[@]}" \
        > $R/$name.txt 2>&1
    echo "== $name"; grep -v "^$" $R/$name.txt | tail -n 40
}
deep() {  # block_n n_sub: the plans tried on each r16 shrink
    local b=$1 s=$2
    PLANS=(table
        "ShrinkPlan(64, $b, $s, 128, 1, 4, 5)" "ShrinkPlan(64, $b, $s, 128, 1, 4, 6)" "ShrinkPlan(64, $b, $s, 128, 1, 4, 8)"
        "ShrinkPlan(64, $b, $s, 64, 1, 4, 8)" "ShrinkPlan(64, $b, $s, 64, 1, 4, 12)"
        "ShrinkPlan(32, $b, $s, 128, 1, 4, 6)" "ShrinkPlan(32, $b, $s, 128, 1, 4, 8)"
        "ShrinkPlan(128, $b, $s, 128, 1, 8, 5)" "ShrinkPlan(64, $b, $s, 256, 1, 4, 4)")
}
deep 16 1; probe r16_shrink1 $C16 shrink1 150 "${PLANS[@]}"
deep 32 1; probe r16_shrink2 $C16 shrink2 150 "${PLANS[@]}"
deep 16 3; probe r16_shrink3 $C16 shrink3 150 "${PLANS[@]}" "ShrinkPlan(64, 64, 1, 128, 1, 4, 6)" "ShrinkPlan(64, 64, 1, 128, 1, 4, 8)"
probe r64_shrink1 $C64 shrink1 110 table \
    "ShrinkPlan(128, 64, 1, 128, 1, 8, 5)" "ShrinkPlan(128, 64, 1, 128, 1, 8, 6)" \
    "ShrinkPlan(64, 64, 1, 128, 1, 4, 6)" "ShrinkPlan(64, 64, 1, 128, 1, 4, 8)" "ShrinkPlan(64, 64, 1, 64, 1, 4, 10)"
