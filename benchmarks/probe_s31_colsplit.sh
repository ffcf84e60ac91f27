#!/usr/bin/env bash
# Session 31, issue 17: column-split plans for the rank-64 prefill / mixed shrinks. cuBLAS's kernel for the dense
# 8192 x 4096 -> 192 GEMM (benchmarks/probe_s31/cublas_names.py on the H100: nvjet 96x128 tiles, cluster 2x1)
# splits the 192 columns between two CTAs and runs in 28.6 us, where our one-program-per-row-chunk plans take
# 45.5. The shrink kernel already takes column groups (grid axis 1: N_OUT / (N_SUB * BLOCK_N)); the tuner's
# grid never proposes them (its prefill tiles always cover the stacked width). Forced plans here, checked
# against the float64 oracle and timed as the compare headlines them, against the table's plan.
# Usage (device tool): bash benchmarks/probe_s31_colsplit.sh [PREFIX]
set -u
P=${1:-s31c}
nvidia-smi --query-gpu=name --format=csv,noheader
C=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
run() {  # op, plans...
    local op=$1; shift
    local args=(); for p in "$@"; do args+=(--plan "$p"); done
    PYTHONPATH=. timeout 200 python3 benchmarks/plan_probe.py --cases $C --op $op --json $OUT/${P}_$op.json "${args[@]}" \
        2>&1 | grep -v Warn | tee $OUT/${P}_$op.txt
}
run shrink3 table \
    'ShrinkPlan(128, 32, 3, 64, 1, 8, 4)' 'ShrinkPlan(128, 32, 3, 64, 1, 4, 4)' 'ShrinkPlan(128, 32, 3, 128, 1, 8, 3)' \
    'ShrinkPlan(128, 32, 3, 64, 1, 4, 3)' 'ShrinkPlan(64, 32, 3, 64, 1, 4, 4)' 'ShrinkPlan(64, 32, 3, 128, 1, 4, 3)' \
    'ShrinkPlan(128, 64, 1, 64, 1, 4, 4)' 'ShrinkPlan(128, 64, 1, 128, 1, 4, 3)' 'ShrinkPlan(64, 64, 1, 128, 1, 4, 4)' \
    'ShrinkPlan(128, 32, 2, 64, 1, 4, 4)' 'ShrinkPlan(128, 16, 4, 64, 1, 4, 4)'
run shrink2 table \
    'ShrinkPlan(128, 64, 1, 64, 1, 4, 4)' 'ShrinkPlan(128, 64, 1, 128, 1, 4, 3)' 'ShrinkPlan(128, 64, 1, 64, 1, 8, 4)' \
    'ShrinkPlan(128, 32, 2, 64, 1, 4, 4)' 'ShrinkPlan(64, 64, 1, 128, 1, 4, 4)' 'ShrinkPlan(128, 32, 1, 64, 1, 4, 4)'
run shrink1 table \
    'ShrinkPlan(128, 32, 1, 128, 1, 4, 4)' 'ShrinkPlan(128, 32, 1, 64, 1, 4, 4)' 'ShrinkPlan(64, 32, 1, 128, 1, 4, 4)'
