#!/usr/bin/env bash
# Session 13, H200 call 6 (issue 17): stream-K with the last tile peeled (a program arriving last adds the other
# partials to its own sums: no partial stored, no ticket). Same plans as call 4, and the GPU tests of the
# stream-K path (forced plans, bitwise run to run).
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call6.tar.gz r; }
trap pack EXIT
R64=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
pp() { local name=$1; shift; timeout 100 python3 benchmarks/plan_probe.py --json $R/$name.json "$@" > $R/$name.txt 2>&1; }
pp r64_shrink3 --cases $R64 --op shrink3 --plan table \
    --plan 'ShrinkPlan(128, 64, 3, 64, 1, 8, 4, stream_k=1)' --plan 'ShrinkPlan(128, 64, 3, 64, 1, 8, 3, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 3, 64, 1, 4, 4, stream_k=1)' --plan 'ShrinkPlan(64, 64, 3, 64, 1, 4, 3, stream_k=2)' \
    --plan 'ShrinkPlan(64, 64, 3, 128, 1, 4, 3, stream_k=1)'
pp r64_shrink2 --cases $R64 --op shrink2,shrink1 --plan table \
    --plan 'ShrinkPlan(128, 64, 2, 64, 1, 8, 4, stream_k=1)' --plan 'ShrinkPlan(128, 128, 1, 64, 1, 8, 4, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 2, 128, 1, 4, 4, stream_k=1)' --plan 'ShrinkPlan(128, 64, 1, 128, 1, 8, 4, stream_k=1)'
timeout 120 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py -q -n 8 -k "triton" \
    -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
timeout 90 ncu --clock-control none --profile-from-start off -k 'regex:_shrink_kernel' --set detailed \
    python3 benchmarks/ncu_probe.py llama3-8b-r64-prefill-8k shrink3 --plan 'ShrinkPlan(128, 64, 3, 64, 1, 8, 4, stream_k=1)' \
    > $R/ncu_sk1_128.txt 2>&1
cat $R/r*.txt | grep -v "^NVIDIA"; tail -2 $R/gpu_tests.txt
grep -E "Duration|SM Active Cycles|One or more SMs" -A1 $R/ncu_sk1_128.txt | head -12
