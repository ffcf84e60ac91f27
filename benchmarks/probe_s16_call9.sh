#!/usr/bin/env bash
# Session 16, H200 call 9 (issue 17): prefill shrink programs of at most 64 rows take their rows and adapter from
# grouping's chunk slots (one round of independent loads before the K loop, instead of the group sizes and then
# the row indices). The compare on the shrink-bearing ops (triton, prefill-8k and mixed, both ranks),
# a 5-stage plan forced on the rank-16 one-slice shrink, and the triton GPU tests.
set -u
export PYTHONPATH=.
W=$(mktemp -d); R=$W/r; mkdir -p $R
pack() { tar -C $W -czf $OUT/call9.tar.gz r; }
trap pack EXIT
timeout 100 python3 -m lora compare --quick --backends triton --no-progress --ops shrink1,shrink2,shrink3,shrink_down,qkv,gate_up \
    --case 'llama3-8b-r*-prefill-8k' --case 'llama3-8b-r*-mixed' --json $R/compare.json > $R/compare.txt 2>&1
grep -E "^\[" $R/compare.txt | sed 's/ bfloat16 triton//'
timeout 60 python3 benchmarks/plan_probe.py --cases llama3-8b-r16-prefill-8k,llama3-8b-r16-mixed --op shrink1 \
    --sets 4 --json $R/stages.json --plan table --plan 'ShrinkPlan(64, 16, 1, 128, 1, 4, 5)' > $R/stages.txt 2>&1
grep -v "^$" $R/stages.txt | tail -n 5
timeout 150 python3 -m pytest tests/gpu tests/lora/test_triton_planning.py -q -n 8 -k triton -rfE -p no:cacheprovider \
    > $R/gpu_tests.txt 2>&1
tail -n 3 $R/gpu_tests.txt
