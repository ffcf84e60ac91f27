#!/usr/bin/env bash
# Session 13, H200 call 7 (issue 17), the session's last: the tree with call 6's stream-K fast path reverted and
# the group heads (grouping.HEAD_ROWS: a decode program's row gather no longer waits for group_start).
# 1. stress the stream-K plans for wrong results (call 6's failing sequence, each plan checked 4 times);
# 2. the compare, triton, every default case (decode rows against s12c3_compare.json: same table);
# 3. the decode step; 4. the triton GPU suite.
set -u
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call7.tar.gz r; }
trap pack EXIT
R64=llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed
timeout 90 python3 benchmarks/plan_probe.py --json $R/stress.json --checks 4 --cases $R64 --op shrink2 --plan table \
    --plan 'ShrinkPlan(128, 128, 1, 64, 1, 8, 4, stream_k=1)' --plan 'ShrinkPlan(64, 64, 2, 128, 1, 4, 4, stream_k=1)' \
    > $R/stress.txt 2>&1
timeout 80 python3 -m lora compare --quick --backends triton --no-progress --json $R/compare.json > $R/compare.txt 2>&1
timeout 45 python3 -m lora compare --step --quick --backends triton --no-progress --json $R/step.json > $R/step.txt 2>&1
timeout 100 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py tests/lora/test_batch_metadata.py -q -n 8 \
    -k "triton" -rfE -p no:cacheprovider > $R/gpu_tests.txt 2>&1
grep -v "^NVIDIA" $R/stress.txt; tail -2 $R/gpu_tests.txt; tail -5 $R/compare.txt; tail -8 $R/step.txt
