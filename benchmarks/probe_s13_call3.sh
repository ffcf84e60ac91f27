#!/usr/bin/env bash
# Session 13, H200 call 3 (issue 17): does the x read's run per row (BLOCK_K x 2 bytes: 128 B at BLOCK_K=64) bound
# the r64 QKV / gate-up shrinks? Call 2 saw DRAM at 35-41% of peak whether 73 or 132 multiprocessors read x.
# Forced plans with BLOCK_K 64 vs 128, stream-K and not; the r64 expand with 128 B vs 256-512 B rows of base_output.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call3.tar.gz r; }
trap pack EXIT
R64=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
timeout 150 python3 benchmarks/plan_probe.py --cases $R64 --op shrink3 --json $R/shrink3.json --plan table \
    --plan 'ShrinkPlan(128, 64, 3, 128, 1, 8, 2)' --plan 'ShrinkPlan(128, 64, 3, 128, 1, 8, 2, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 3, 128, 1, 4, 3, stream_k=1)' --plan 'ShrinkPlan(64, 64, 3, 128, 1, 4, 2, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 3, 128, 1, 4, 3)' --plan 'ShrinkPlan(64, 64, 3, 64, 1, 4, 4, stream_k=1)' \
    > $R/shrink3.txt 2>&1
timeout 120 python3 benchmarks/plan_probe.py --cases $R64 --op shrink2 --json $R/shrink2.json --plan table \
    --plan 'ShrinkPlan(64, 64, 2, 128, 1, 4, 3, stream_k=1)' --plan 'ShrinkPlan(64, 64, 2, 128, 1, 4, 4, stream_k=1)' \
    --plan 'ShrinkPlan(128, 64, 2, 128, 1, 8, 3, stream_k=1)' --plan 'ShrinkPlan(64, 64, 2, 64, 1, 4, 4, stream_k=2)' \
    > $R/shrink2.txt 2>&1
timeout 120 python3 benchmarks/plan_probe.py --cases $R64 --op expand,expand_qkv --json $R/expand.json --plan table \
    --plan 'ExpandPlan(64, 128, 1, 4, 2)' --plan 'ExpandPlan(32, 128, 1, 4, 2)' --plan 'ExpandPlan(32, 256, 1, 4, 2)' \
    --plan 'ExpandPlan(64, 256, 1, 8, 2)' --plan 'ExpandPlan(128, 128, 1, 8, 2)' \
    > $R/expand.txt 2>&1
timeout 90 ncu --clock-control none --profile-from-start off -k 'regex:_shrink_kernel' --set detailed \
    python3 benchmarks/ncu_probe.py llama3-8b-r64-prefill-8k shrink3 --plan 'ShrinkPlan(64, 64, 3, 128, 1, 4, 3, stream_k=1)' \
    > $R/ncu_r64p_shrink3_bk128_sk1.txt 2>&1
cat $R/shrink3.txt $R/shrink2.txt $R/expand.txt
grep -E "Duration|DRAM Throughput|L2 Cache Throughput|SM Active Cycles" $R/ncu_*.txt
