#!/usr/bin/env bash
# Session 40, one device call, any card. On an H200: issue 17's geometry tune of the H200 table
# (benchmarks/probe_s35_h200.sh; carry .peers/src and .peers/site). On another card: issue 16's trial of the split
# shrink launched as a programmatic dependent that waits for the kernel before it (before any memory access) and
# never lets its own sum launch early (benchmarks/probe_s40/shrink_waits.patch: mode PDL_WAIT), so that its launch
# and set-up overlap the tail of the expand before it. With the patch applied: the PDL chain test (the patch sets
# its expected modes), then the decode step (pallas); without: the decode step (triton, pallas).
# Carry .pallas-cache lowered by `PATCH_DIR=benchmarks/probe_s40 bash benchmarks/probe_s39_lower.sh "main shrink_waits"`.
# Decision rule, written before the call: the trial lands if the pallas step is faster with it than with main on at
# least three of the four cases and slower by no more than 1% on the other (and the chain test passes).
# Usage (device tool): [MAIN_BACKENDS=pallas] bash benchmarks/probe_s40_any.sh [PREFIX]
set -u
P=${1:-s40w}
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    bash benchmarks/probe_s35_h200.sh
    exit
fi
# (the trial landed in 74bb056: after that the patch no longer applies, and nothing runs on another card)
git apply --check benchmarks/probe_s40/shrink_waits.patch 2>/dev/null || { echo "shrink_waits already in main: nothing run"; exit 0; }
source benchmarks/probe_preamble.sh
t0=$SECONDS
PYTHONPATH=. timeout 100 python3 -m lora compare --step --quick --backends ${MAIN_BACKENDS:-triton,pallas} --no-progress \
    --json $OUT/${P}_step_main.json > $OUT/${P}_step_main.txt 2>&1
echo "== step main rc=$? $((SECONDS - t0)) s"; grep -E "graph_once" $OUT/${P}_step_main.txt | cut -c1-110
git apply benchmarks/probe_s40/shrink_waits.patch || { echo "patch failed"; exit 1; }
t0=$SECONDS
PYTHONPATH=. timeout 120 python3 -m pytest -q -p no:cacheprovider -n 3 tests/gpu/test_pallas_pdl.py > $OUT/${P}_pdl_test.txt 2>&1
echo "== pdl test (shrink_waits) rc=$? $((SECONDS - t0)) s"; grep -E "passed|failed|Error" $OUT/${P}_pdl_test.txt | tail -n 5 | cut -c1-300
t0=$SECONDS
PYTHONPATH=. timeout 80 python3 -m lora compare --step --quick --backends pallas --no-progress \
    --json $OUT/${P}_step_shrink_waits.json > $OUT/${P}_step_shrink_waits.txt 2>&1
echo "== step shrink_waits rc=$? $((SECONDS - t0)) s"; grep -E "graph_once" $OUT/${P}_step_shrink_waits.txt | cut -c1-110
git apply -R benchmarks/probe_s40/shrink_waits.patch
