#!/usr/bin/env bash
# Session 32, issue 17: prefill / mixed shrinks with their tiles loaded through tensor descriptors (TMA,
# ShrinkPlan.tma). On the H100, benchmarks/dense_reference.py (s32d) timed the dense 8192 x 4096 -> 192 GEMM in
# Triton at 41.7 us with pointer loads and 32.3 us with descriptor loads (128 x 64 x 64 tiles, 4 warps; cuBLAS
# 27.9). Here the shrink kernel's own plans, the table's against the same and nearby tiles with tma=True, checked
# against the float64 oracle and timed as the compare headlines them; then the TMA tests on the GPU.
# Usage (device tool): bash benchmarks/probe_s32_tma.sh [PREFIX]
set -u
P=${1:-s32t}
nvidia-smi --query-gpu=name --format=csv,noheader
run() {  # cases, op, plans...
    local cases=$1 op=$2; shift 2
    local args=(); for p in "$@"; do args+=(--plan "$p"); done
    PYTHONPATH=. timeout 140 python3 benchmarks/plan_probe.py --cases $cases --op $op --json $OUT/${P}_${op}_${cases%%,*}.json \
        "${args[@]}" 2>&1 | grep -v Warn | tee $OUT/${P}_${op}_${cases%%,*}.txt
}
PYTHONPATH=. timeout 90 python3 -m pytest -q -p no:cacheprovider tests/lora/test_triton_planning.py -k "tma or descriptors" \
    2>&1 | tail -3 | tee $OUT/${P}_tests.txt
R64=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
R16=llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed
run $R64 shrink3 table \
    'ShrinkPlan(128, 64, 1, 64, 1, 4, 4, tma=True)' 'ShrinkPlan(256, 64, 1, 64, 1, 8, 4, tma=True)' \
    'ShrinkPlan(64, 64, 1, 64, 1, 4, 4, tma=True)' 'ShrinkPlan(128, 64, 3, 64, 1, 8, 4, tma=True)' \
    'ShrinkPlan(128, 64, 1, 128, 1, 4, 3, tma=True)' 'ShrinkPlan(128, 32, 2, 64, 1, 4, 4, tma=True)' \
    'ShrinkPlan(128, 64, 1, 64, 1, 8, 4, tma=True)' 'ShrinkPlan(128, 64, 1, 64, 1, 4, 4)'
run $R64 shrink2 table \
    'ShrinkPlan(64, 64, 1, 64, 1, 4, 4, tma=True)' 'ShrinkPlan(128, 64, 1, 64, 1, 4, 4, tma=True)' \
    'ShrinkPlan(128, 64, 2, 64, 1, 8, 4, tma=True)' 'ShrinkPlan(128, 128, 1, 64, 1, 8, 4, tma=True)'
run $R64 shrink1 table \
    'ShrinkPlan(128, 64, 1, 128, 1, 8, 4, tma=True)' 'ShrinkPlan(128, 64, 1, 64, 1, 4, 4, tma=True)' \
    'ShrinkPlan(64, 64, 1, 64, 1, 4, 4, tma=True)' 'ShrinkPlan(64, 64, 1, 128, 1, 4, 4, tma=True)'
run $R16 shrink3 table \
    'ShrinkPlan(64, 32, 2, 128, 1, 4, 4, tma=True)' 'ShrinkPlan(64, 64, 1, 128, 1, 8, 4, tma=True)' \
    'ShrinkPlan(128, 16, 3, 128, 1, 4, 4, tma=True)' 'ShrinkPlan(128, 64, 1, 128, 1, 8, 4, tma=True)'
run $R16 shrink1 table \
    'ShrinkPlan(64, 16, 1, 128, 1, 4, 4, tma=True)' 'ShrinkPlan(128, 16, 1, 128, 1, 4, 4, tma=True)' \
    'ShrinkPlan(64, 16, 1, 256, 1, 4, 3, tma=True)'
