#!/usr/bin/env bash
# Session 13, H200 call 7 (issue 17): the tree after reverting call 6's stream-K fast path (call 4's protocol).
# Stress the stream-K plans for wrong results: call 6's failing sequence (r64 mixed shrink2: the 128x128 plan's
# checks and timing, then the 64x(2x64) BLOCK_K 128 plan) with every plan checked 6 times, both batches, both
# multi-column shrinks; then the whole triton GPU suite.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call7.tar.gz r; }
trap pack EXIT
R64=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
timeout 200 python3 benchmarks/plan_probe.py --json $R/stress.json --checks 6 --cases $R64 --op shrink2,shrink3 --plan table \
    --plan 'ShrinkPlan(128, 64, 3, 64, 1, 8, 4, stream_k=1)' --plan 'ShrinkPlan(128, 128, 1, 64, 1, 8, 4, stream_k=1)' \
    --plan 'ShrinkPlan(64, 64, 2, 128, 1, 4, 4, stream_k=1)' > $R/stress.txt 2>&1
timeout 120 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py -q -n 8 -k "triton" \
    -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
grep -v "^NVIDIA" $R/stress.txt; tail -2 $R/gpu_tests.txt
