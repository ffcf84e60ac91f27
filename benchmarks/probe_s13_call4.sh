#!/usr/bin/env bash
# Session 13, H200 call 4 (issue 17): the stream-K shrink with uniform loop bounds (its K loop compiles to the
# plain kernel's instructions: call 2/3 saw stream-K plans run one tile per program at 56 us where the plain
# kernel ran the same tile in 36). Forced plans on every prefill / mixed shrink bucket against the table's plan.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call4.tar.gz r; }
trap pack EXIT
R64=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
R16=llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed
pp() { local name=$1; shift; timeout 100 python3 benchmarks/plan_probe.py --json $R/$name.json "$@" > $R/$name.txt 2>&1; }
pp r64_shrink3 --cases $R64 --op shrink3 --plan table \
    --plan 'ShrinkPlan(64, 64, 3, 128, 1, 4, 3, stream_k=1)' --plan 'ShrinkPlan(64, 64, 3, 64, 1, 4, 4, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 3, 64, 1, 4, 3, stream_k=2)' --plan 'ShrinkPlan(128, 64, 3, 64, 1, 8, 4, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 3, 128, 1, 8, 3, stream_k=1)'
pp r64_shrink2 --cases $R64 --op shrink2 --plan table \
    --plan 'ShrinkPlan(64, 64, 2, 128, 1, 4, 4, stream_k=1)' --plan 'ShrinkPlan(64, 64, 2, 128, 1, 4, 3, stream_k=1)' \
    --plan 'ShrinkPlan(64, 128, 1, 128, 1, 4, 4, stream_k=1)' --plan 'ShrinkPlan(64, 64, 2, 64, 1, 4, 4, stream_k=2)' \
    --plan 'ShrinkPlan(128, 64, 2, 64, 1, 8, 4, stream_k=1)'
pp r64_shrink1 --cases $R64 --op shrink1,shrink_down --plan table \
    --plan 'ShrinkPlan(64, 64, 1, 128, 1, 4, 4, stream_k=2)' --plan 'ShrinkPlan(128, 64, 1, 128, 1, 8, 4, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 1, 128, 1, 4, 4, stream_k=1)'
pp r16_shrink1 --cases $R16 --op shrink1,shrink_down --plan table \
    --plan 'ShrinkPlan(64, 16, 1, 128, 1, 4, 4, stream_k=2)' --plan 'ShrinkPlan(64, 16, 1, 256, 1, 4, 3, stream_k=2)' \
    --plan 'ShrinkPlan(64, 16, 1, 128, 1, 4, 4, stream_k=1)'
pp r16_shrink3 --cases $R16 --op shrink2,shrink3 --plan table \
    --plan 'ShrinkPlan(64, 64, 1, 128, 1, 4, 4, stream_k=2)' --plan 'ShrinkPlan(64, 16, 3, 128, 1, 4, 4, stream_k=2)' \
    --plan 'ShrinkPlan(64, 32, 2, 128, 1, 4, 4, stream_k=2)'
timeout 100 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py -q -n 8 -k "triton and (stream or bitwise or forced)" \
    -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
cat $R/r*.txt | grep -v "^NVIDIA"; tail -2 $R/gpu_tests.txt
