#!/usr/bin/env bash
# Session 13, H200 call 2 (issue 17): stream-K shrink with the partial tiles finished after the program's loop
# (not inside it). Forced plans on the shrinks furthest from 85% (r64 QKV and gate-up shrinks) and the r16 shrink,
# timed as the compare does (benchmarks/plan_probe.py), and Nsight Compute on the 128-row stream-K plan.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call2.tar.gz r; }
trap pack EXIT
R64=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
timeout 150 python3 benchmarks/plan_probe.py --cases $R64 --op shrink3 --json $R/shrink3.json --plan table \
    --plan 'ShrinkPlan(128, 64, 3, 64, 1, 8, 4, stream_k=1)' --plan 'ShrinkPlan(128, 64, 3, 64, 1, 8, 3, stream_k=1)' \
    --plan 'ShrinkPlan(128, 64, 3, 32, 1, 8, 5, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 3, 64, 1, 4, 3, stream_k=2)' --plan 'ShrinkPlan(64, 64, 3, 64, 1, 4, 4, stream_k=1)' \
    > $R/shrink3.txt 2>&1
timeout 120 python3 benchmarks/plan_probe.py --cases $R64 --op shrink2 --json $R/shrink2.json --plan table \
    --plan 'ShrinkPlan(128, 64, 2, 64, 1, 8, 4, stream_k=1)' --plan 'ShrinkPlan(128, 128, 1, 64, 1, 8, 4, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 2, 64, 1, 4, 4, stream_k=2)' --plan 'ShrinkPlan(64, 128, 1, 128, 1, 4, 3, stream_k=2)' \
    > $R/shrink2.txt 2>&1
timeout 120 python3 benchmarks/plan_probe.py --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed --op shrink1,shrink3 \
    --json $R/r16.json --plan table \
    --plan 'ShrinkPlan(64, 16, 1, 128, 1, 4, 4, stream_k=2)' --plan 'ShrinkPlan(64, 64, 1, 128, 1, 4, 4, stream_k=2)' \
    --plan 'ShrinkPlan(128, 16, 1, 128, 1, 4, 4, stream_k=2)' --plan 'ShrinkPlan(64, 16, 1, 256, 1, 4, 3)' \
    > $R/r16.txt 2>&1
SK1='ShrinkPlan(128, 64, 3, 64, 1, 8, 4, stream_k=1)'
for c in prefill-8k mixed; do
    timeout 100 ncu --clock-control none --profile-from-start off -k 'regex:_shrink_kernel' --set detailed \
        python3 benchmarks/ncu_probe.py llama3-8b-r64-$c shrink3 --plan "$SK1" > $R/ncu_r64_${c}_shrink3_sk1.txt 2>&1
done
timeout 100 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py -q -n 8 -k "triton and (stream or bitwise or forced)" \
    -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
cat $R/shrink3.txt $R/shrink2.txt $R/r16.txt; tail -2 $R/gpu_tests.txt
grep -E "Duration|Registers Per|SM Active Cycles|DRAM Throughput" $R/ncu_*.txt
